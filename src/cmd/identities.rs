//! `cortexid identities`: what this caller may request, as a table.

use crate::cmd::client::ClientError;
use crate::cmd::common::{EXIT_FAILURE, EXIT_OK, SocketArg, describe_error, emit, error_line};

#[derive(clap::Args, Debug, Clone)]
pub struct IdentitiesArgs {
    #[command(flatten)]
    pub(crate) socket: SocketArg,
}

/// GETs `path` and returns its JSON when the answer is a success; otherwise prints why.
async fn fetch(socket: &SocketArg, path: &str) -> Result<(u16, serde_json::Value), i32> {
    let resp = socket.client().get(path).await.map_err(|e: ClientError| {
        eprintln!("cortexid: {e}");
        EXIT_FAILURE
    })?;
    match resp.json() {
        Ok(body) if resp.is_success() || body.get("error").is_none() => Ok((resp.status, body)),
        _ if !resp.is_success() => {
            let (code, description) = describe_error(&resp);
            eprintln!("{}", error_line(&code, &description));
            Err(EXIT_FAILURE)
        }
        Ok(_) => Err(EXIT_FAILURE),
        Err(e) => {
            eprintln!("cortexid: {e}");
            Err(EXIT_FAILURE)
        }
    }
}

fn strings(v: &serde_json::Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default()
}

/// Lays out rows as aligned columns (the last column is not padded).
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 < row.len() {
                let pad = widths[c].saturating_sub(cell.chars().count());
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A readable table of `/v1/identities`: name, agent, audiences, scopes.
pub(crate) fn format_identities(body: &serde_json::Value) -> String {
    let body = &crate::cmd::common::printable_json(body);
    let list = body["identities"].as_array().map(Vec::as_slice).unwrap_or_default();
    if list.is_empty() {
        return "no identities: no role of this agent lets this caller ask for a token\n".to_string();
    }
    let or_dash = |v: Vec<&str>, sep: &str| {
        if v.is_empty() { "-".to_string() } else { v.join(sep) }
    };
    let mut rows = vec![vec![
        "NAME".to_string(),
        "AGENT".to_string(),
        "AUDIENCES".to_string(),
        "SCOPES".to_string(),
    ]];
    for id in list {
        rows.push(vec![
            id["name"].as_str().unwrap_or("?").to_string(),
            if id["agent"] == true { "yes" } else { "no" }.to_string(),
            or_dash(strings(&id["audiences"]), ", "),
            or_dash(strings(&id["scopes"]), " "),
        ]);
    }
    table(&rows)
}

/// `cortexid identities`.
pub async fn run(args: IdentitiesArgs) -> i32 {
    match fetch(&args.socket, "/v1/identities").await {
        Ok((_, body)) => {
            if emit(&format_identities(&body)) {
                EXIT_OK
            } else {
                EXIT_FAILURE
            }
        }
        Err(code) => code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_a_table() {
        let body = serde_json::json!({"identities": [
            {"name": "payments", "audiences": ["https://payments.internal", "https://b"], "scopes": ["payments.read", "payments.write"], "agent": false},
            {"name": "bot", "audiences": ["https://x"], "scopes": [], "agent": true}]});
        assert_eq!(
            format_identities(&body),
            "NAME      AGENT  AUDIENCES                             SCOPES\n\
             payments  no     https://payments.internal, https://b  payments.read payments.write\n\
             bot       yes    https://x                             -\n"
        );
        assert!(format_identities(&serde_json::json!({"identities": []})).starts_with("no identities"));
    }
}
