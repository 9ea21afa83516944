//! The one nftables rule Warren keeps: masquerade of traffic that leaves the node's
//! subnet for somewhere outside the cluster CIDR, in a table Warren owns entirely.
//! Not service traffic: that is the eBPF data plane's, never nftables'.

use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;

use super::error::NetworkError;
use super::netns::{in_netns, Ns};

/// The ruleset of Warren's table. Deleting and re-adding the table in one `nft -f`
/// transaction makes installing it idempotent and atomic: there is never a moment
/// with no rule or with two.
pub(crate) fn masquerade_script(table: &str, subnet: Ipv4Net, cluster_cidr: Ipv4Net) -> String {
    format!(
        "add table ip {table}\n\
         delete table ip {table}\n\
         table ip {table} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {subnet} ip daddr != {cluster_cidr} counter masquerade comment \"warren outbound\"\n\
         \t}}\n\
         }}\n"
    )
}

/// Removes Warren's table; nothing if there is none.
pub(crate) fn delete_script(table: &str) -> String {
    format!("add table ip {table}\ndelete table ip {table}\n")
}

/// Runs `nft -f -` with `script` in namespace `ns`.
pub(crate) async fn apply(ns: Ns, table: &str, script: String) -> Result<(), NetworkError> {
    let table = table.to_string();
    in_netns(ns, move || {
        let err = |reason: String| NetworkError::Nft {
            table: table.clone(),
            reason,
        };
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    err("the nft command is not installed (Debian package nftables)".into())
                } else {
                    err(format!("run nft: {e}"))
                }
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .map_err(|e| err(format!("write to nft: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| err(format!("wait for nft: {e}")))?;
        if !out.status.success() {
            return Err(err(format!(
                "nft -f failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_holds_exactly_one_masquerade_rule() {
        let s = masquerade_script(
            "warren",
            "10.88.3.0/24".parse().unwrap(),
            "10.88.0.0/16".parse().unwrap(),
        );
        assert!(s.starts_with("add table ip warren\ndelete table ip warren\n"));
        assert_eq!(s.matches("masquerade").count(), 1);
        assert!(s.contains("ip saddr 10.88.3.0/24 ip daddr != 10.88.0.0/16 counter masquerade"));
        assert_eq!(delete_script("warren"), "add table ip warren\ndelete table ip warren\n");
    }
}
