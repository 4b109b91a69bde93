// A real OpenID Connect provider (oidc-provider) for cortexid's interop tests (tests/interop.rs).
//
//   node provider.mjs SETUP.json
//
// SETUP.json (written by the test):
//   { "cert": PEM path, "key": PEM path,          TLS for https://127.0.0.1:<random port>
//     "clients": [{ "client_id", "token_endpoint_auth_method", "client_secret"?, "jwk"? }],
//     "resources": { "<audience>": "scope1 scope2" },   resource servers (JWT access tokens)
//     "subject_issuer": "...", "subject_jwks": { "keys": [...] },   who signs subject/actor tokens
//     "ttl": seconds,
//     "people": PATH?  }                            optional: people sign in (below)
//
// With "people": clients may also set "grant_types", "redirect_uris", "response_types" and
// "application_type" (a login client: device_code, authorization_code, refresh_token); the
// device flow, revocation and the development sign-in forms (devInteractions: any login, any
// password, then consent) are enabled; PATH is a JSON file {"<login>": ["group", ...]} read at
// every token issued, so a test changes a person's groups by rewriting it. ID tokens carry
// name, email and groups.
//
// Prints one JSON line {"issuer": ...} on stdout once it listens; exits when stdin closes (so it
// never outlives the test that started it). Never logs tokens or secrets.

import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';

import * as jose from 'jose';
import Provider, { errors } from 'oidc-provider';

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const JWT_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:jwt';

// stdout carries the one JSON line the test reads, and the test stops reading after it:
// oidc-provider's notices (console.info, e.g. about the default device flow pages) go to stderr.
console.log = (...args) => console.error(...args);
console.info = console.log;

const setup = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const server = createServer({ cert: readFileSync(setup.cert), key: readFileSync(setup.key) });
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `https://127.0.0.1:${server.address().port}`;

const signing = await jose.generateKeyPair('ES256', { extractable: true });
const signingJwk = { ...(await jose.exportJWK(signing.privateKey)), kid: 'interop-1', use: 'sig' };

const subjectKeys = jose.createLocalJWKSet(setup.subject_jwks);

function resourceServer(audience) {
  const scope = setup.resources[audience];
  if (scope === undefined) {
    throw new errors.InvalidTarget(`resource ${audience} is not registered`);
  }
  return {
    scope,
    audience,
    accessTokenTTL: setup.ttl,
    accessTokenFormat: 'jwt',
    jwt: { sign: { alg: 'ES256' } },
  };
}

const people = setup.people !== undefined;

function groupsOf(login) {
  if (!people) return [];
  const all = JSON.parse(readFileSync(setup.people, 'utf8'));
  return all[login] || [];
}

const provider = new Provider(issuer, {
  clients: setup.clients.map((c) => ({
    client_id: c.client_id,
    token_endpoint_auth_method: c.token_endpoint_auth_method,
    ...(c.client_secret ? { client_secret: c.client_secret } : {}),
    ...(c.jwk ? { jwks: { keys: [c.jwk] } } : {}),
    grant_types: c.grant_types || ['client_credentials', TOKEN_EXCHANGE],
    redirect_uris: c.redirect_uris || [],
    response_types: c.response_types || [],
    ...(c.application_type ? { application_type: c.application_type } : {}),
  })),
  ...(people ? {
    findAccount: async (_ctx, id) => ({
      accountId: id,
      claims: async () => ({
        sub: id, name: id, email: `${id}@example.com`, email_verified: true, groups: groupsOf(id),
      }),
    }),
    claims: {
      openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'], groups: ['groups'],
    },
    // Scope claims in the ID token too, not only at userinfo (which cortexid does not call).
    conformIdTokenClaims: false,
  } : {}),
  jwks: { keys: [signingJwk] },
  clientDefaults: { id_token_signed_response_alg: 'ES256' },
  cookies: { keys: [Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString('base64url')] },
  features: {
    devInteractions: { enabled: people },
    deviceFlow: { enabled: people },
    revocation: { enabled: people },
    clientCredentials: { enabled: true },
    introspection: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => undefined,
      useGrantedResource: async () => false,
      getResourceServerInfo: async (_ctx, indicator) => resourceServer(indicator),
    },
  },
  scopes: [...new Set([
    ...Object.values(setup.resources).flatMap((s) => s.split(' ')),
    ...(people ? ['openid', 'offline_access', 'email', 'profile', 'groups'] : []),
  ])],
  // Claims of an exchanged token: act (RFC 8693 section 4.1), set by the grant handler below.
  extraTokenClaims: async (ctx) => ctx?.state?.exchange?.extra,
  formats: {
    customizers: {
      jwt: async (ctx, _token, jwt) => {
        // An exchanged token is about the subject, not about the client.
        if (ctx?.state?.exchange?.sub) jwt.payload.sub = ctx.state.exchange.sub;
      },
    },
  },
});
provider.on('server_error', (_ctx, err) => console.error('oidc-provider server_error:', err.message));

async function verifyCredential(token, type, what) {
  if (type !== JWT_TOKEN_TYPE && type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest(`unsupported ${what}_type`);
  }
  try {
    const { payload } = await jose.jwtVerify(token, subjectKeys, {
      issuer: setup.subject_issuer,
      audience: issuer,
    });
    return payload;
  } catch (e) {
    throw new errors.InvalidGrant(`${what} is not valid: ${e.code || e.message}`);
  }
}

// RFC 8693 token exchange, registered through oidc-provider's documented extension hook.
async function tokenExchange(ctx, next) {
  const { params, client } = ctx.oidc;
  const requested = params.requested_token_type;
  if (requested && requested !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest('only access tokens can be requested');
  }
  const audiences = [params.audience, params.resource].flat().filter(Boolean);
  if (new Set(audiences).size !== 1) {
    throw new errors.InvalidTarget('exactly one audience or resource is required');
  }
  const audience = audiences[0];
  const info = resourceServer(audience);

  const subject = await verifyCredential(params.subject_token, params.subject_token_type, 'subject_token');
  let act;
  if (params.actor_token) {
    const actor = await verifyCredential(params.actor_token, params.actor_token_type, 'actor_token');
    if (subject.may_act && subject.may_act.sub !== actor.sub) {
      throw new errors.InvalidGrant('the subject_token may_act does not name the actor');
    }
    act = subject.act ? { sub: actor.sub, act: subject.act } : { sub: actor.sub };
  } else if (subject.act) {
    act = subject.act;
  }

  const allowed = new Set(info.scope.split(' '));
  const scopes = params.scope ? [...new Set(params.scope.split(' '))] : [];
  for (const s of scopes) {
    if (!allowed.has(s)) throw new errors.InvalidScope('requested scope is not allowed', s);
  }

  ctx.state.exchange = { sub: subject.sub, extra: act ? { act } : undefined };
  const token = new ctx.oidc.provider.ClientCredentials({ client, scope: scopes.join(' ') || undefined });
  token.resourceServer = new ctx.oidc.provider.ResourceServer(audience, info);
  ctx.oidc.entity('ClientCredentials', token);
  const value = await token.save();

  ctx.body = {
    access_token: value,
    issued_token_type: ACCESS_TOKEN_TYPE,
    token_type: token.tokenType,
    expires_in: token.expiration,
    scope: token.scope || undefined,
  };
  await next();
}

provider.registerGrantType(
  TOKEN_EXCHANGE,
  tokenExchange,
  ['audience', 'resource', 'scope', 'requested_token_type', 'subject_token', 'subject_token_type',
    'actor_token', 'actor_token_type'],
  ['audience', 'resource'],
);

server.on('request', provider.callback());
process.stdout.write(`${JSON.stringify({ issuer })}\n`);
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
process.stdin.on('close', () => process.exit(0));
