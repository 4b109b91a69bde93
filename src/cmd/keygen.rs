//! `cortexid keygen`: create a private key for `private_key_jwt` client authentication, write it
//! (PKCS#8 PEM, mode 0600, never over an existing file) and print its public JWK to register at
//! the provider. The private key itself is never printed.

use std::path::PathBuf;

use crate::cmd::common::{EXIT_FAILURE, EXIT_OK};
use crate::upstream::keys;

#[derive(clap::Args, Debug, Clone)]
pub struct KeygenArgs {
    /// Where to write the private key (PKCS#8 PEM, mode 0600)
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// ES256, EdDSA or RS256
    #[arg(long, default_value = "ES256")]
    pub(crate) alg: keys::KeyAlg,
}

/// `cortexid keygen`: the public JWK on stdout, where the key went on stderr.
pub fn run(args: KeygenArgs) -> i32 {
    let out = &args.out;
    let result = keys::SigningKey::generate(args.alg).and_then(|k| keys::write_key_file(out, &k).map(|()| k));
    match result {
        Ok(key) => {
            let jwk = serde_json::to_string_pretty(key.public_jwk()).unwrap_or_default();
            println!("{jwk}");
            eprintln!(
                "private key written to {} (mode 0600); register the public JWK above at the provider",
                out.display()
            );
            EXIT_OK
        }
        Err(e) => {
            eprintln!("cortexid keygen: {e}");
            EXIT_FAILURE
        }
    }
}
