//! The checks of one `[[login]]`: the provider's sign-in endpoints (for the configured flow),
//! whether it accepts the login client (a refresh with a never-issued token: nothing is issued),
//! refresh tokens, and whether it offers revocation (what `cortexid logout` does with it).

use crate::config::{Config, LoginFlow, LoginSettings};
use crate::upstream::ProviderClient;

use super::report::{fail, note, ok};

/// Checks `login`; returns whether people can sign in at it.
pub(super) async fn check_login(config: &Config, login: &LoginSettings) -> bool {
    println!(
        "login {:?} (client {:?}, flow {}, provider {:?})",
        login.name,
        login.client_id,
        login.flow.as_str(),
        login.provider
    );
    let Some(settings) = config.provider(&login.provider) else {
        fail(
            "provider",
            "not configured",
            "the [[login]] names no [[provider]]",
            "fix provider of the [[login]]",
        );
        return false;
    };
    let client = match ProviderClient::new(settings.clone(), config.agent.upstream_timeout) {
        Ok(c) => c,
        Err(e) => {
            fail(
                "provider client",
                &e,
                "the HTTPS client cannot be set up",
                "fix ca_file of the provider",
            );
            return false;
        }
    };
    let meta = match client.login_metadata().await {
        Ok(m) => m,
        Err(e) => {
            fail(
                "discovery",
                &e,
                "sign-in endpoints come only from the provider's discovery document",
                "make <issuer>/.well-known/openid-configuration reachable from this host",
            );
            return false;
        }
    };
    let support = meta.login_support();
    let mut works = true;
    for (flow, offered) in [("device", &support.device), ("browser", &support.browser)] {
        let wanted = match login.flow {
            LoginFlow::Auto => false,
            LoginFlow::Device => flow == "device",
            LoginFlow::Browser => flow == "browser",
        };
        match offered {
            Ok(()) => ok(&format!("{flow} flow"), "offered"),
            Err(e) if wanted => {
                works = false;
                fail(
                    &format!("{flow} flow"),
                    format!("provider {:?} {e}", login.provider),
                    format!("the [[login]] uses flow = {:?}", login.flow.as_str()),
                    "enable the flow at the provider, or set flow to one it offers",
                );
            }
            Err(e) => note(
                &format!("{flow} flow"),
                format!("not offered: provider {:?} {e}", login.provider),
            ),
        }
    }
    if login.flow == LoginFlow::Auto && support.device.is_err() && support.browser.is_err() {
        works = false;
        fail(
            "flows",
            "neither the device nor the browser flow is offered",
            "people cannot sign in at this provider",
            "enable the device authorization grant or the authorization code grant for the login client",
        );
    }
    if support.refresh {
        ok("refresh", "refresh_token grant offered")
    } else {
        note(
            "refresh",
            "refresh_token is not among grant_types_supported: sessions last as long as their first access token",
        )
    }
    if support.revocation {
        ok(
            "revocation",
            "offered (RFC 7009): cortexid logout revokes the refresh token",
        )
    } else {
        note(
            "revocation",
            "not offered: cortexid logout forgets the session but cannot revoke it at the provider",
        )
    }
    match client.probe_login_client(&login.client_id, &login.client_auth).await {
        Ok(()) => ok(
            "login client",
            format!("{:?} is accepted by the provider", login.client_id),
        ),
        Err(e) => {
            works = false;
            fail(
                "login client",
                &e,
                "the provider does not accept this client (unknown, or not allowed these grants)",
                "register client_id at the provider as a native (public) client with the device and authorization code grants, or fix client_id and client_auth of the [[login]]",
            );
        }
    }
    works
}
