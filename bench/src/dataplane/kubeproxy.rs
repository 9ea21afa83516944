//! The iptables baseline: the nat-table rules kube-proxy (iptables mode) writes for
//! a set of services, as `iptables-restore` input. Only text is produced here;
//! the scenarios apply it inside their own network namespaces.
//!
//! The shape follows kube-proxy 1.28+: `KUBE-SERVICES` holds one rule per
//! (cluster IP, port), jumped to from PREROUTING and OUTPUT; each service has a
//! `KUBE-SVC-*` chain that picks an endpoint with `-m statistic --mode random
//! --probability 1/n, 1/(n-1), ...` and one `KUBE-SEP-*` chain per endpoint that
//! DNATs; node ports go through `KUBE-NODEPORTS` (last rule of `KUBE-SERVICES`,
//! local destinations only). Chain names are kube-proxy's: the first 16 characters
//! of the base32 SHA-256 of the service port name and protocol (plus the endpoint
//! for `KUBE-SEP-*`). The filter table, whose chains stay empty while every
//! service has endpoints, is left out.

use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// One service port as kube-proxy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeService {
    /// `namespace/name:port`, as in kube-proxy's comments and hashes.
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    /// `addr:port` of each ready endpoint.
    pub endpoints: Vec<(Ipv4Addr, u16)>,
    /// A node port with `externalTrafficPolicy: Local` (no SNAT, the client's
    /// address is kept), like Warren's published ports to local backends.
    pub node_port: Option<u16>,
}

fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            out.push(ALPHABET[((acc >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn hash16(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
    }
    base32(&h.finalize())[..16].to_string()
}

impl KubeService {
    pub fn svc_chain(&self) -> String {
        format!("KUBE-SVC-{}", hash16(&[&self.name, "tcp"]))
    }
    fn svl_chain(&self) -> String {
        format!("KUBE-SVL-{}", hash16(&[&self.name, "tcp"]))
    }
    fn ext_chain(&self) -> String {
        format!("KUBE-EXT-{}", hash16(&[&self.name, "tcp"]))
    }
    fn sep_chain(&self, ep: (Ipv4Addr, u16)) -> String {
        format!(
            "KUBE-SEP-{}",
            hash16(&[&self.name, "tcp", &format!("{}:{}", ep.0, ep.1)])
        )
    }

    /// The chains of this service other than `KUBE-SERVICES`/`KUBE-NODEPORTS`.
    fn own_chains(&self) -> Vec<String> {
        let mut c = vec![self.svc_chain()];
        if self.node_port.is_some() {
            c.push(self.ext_chain());
            c.push(self.svl_chain());
        }
        c.extend(self.endpoints.iter().map(|&ep| self.sep_chain(ep)));
        c
    }

    fn services_rule(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{} cluster IP\" -m tcp --dport {} -j {}",
            self.cluster_ip,
            self.name,
            self.port,
            self.svc_chain()
        );
    }

    fn nodeport_rule(&self, out: &mut String) {
        if let Some(np) = self.node_port {
            let _ = writeln!(
                out,
                "-A KUBE-NODEPORTS -p tcp -m comment --comment \"{}\" -m tcp --dport {np} -j {}",
                self.name,
                self.ext_chain()
            );
        }
    }

    /// The random pick over `endpoints` into `chain`, as kube-proxy writes it.
    fn pick_rules(&self, chain: &str, out: &mut String) {
        let n = self.endpoints.len();
        for (i, &ep) in self.endpoints.iter().enumerate() {
            let left = n - i;
            let stat = if left > 1 {
                format!(" -m statistic --mode random --probability {:.10}", 1.0 / left as f64)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "-A {chain} -m comment --comment \"{} -> {}:{}\"{stat} -j {}",
                self.name,
                ep.0,
                ep.1,
                self.sep_chain(ep)
            );
        }
    }

    fn chain_rules(&self, cluster_cidr: &str, out: &mut String) {
        let svc = self.svc_chain();
        // Traffic to the cluster IP from outside the pod network is masqueraded.
        let _ = writeln!(
            out,
            "-A {svc} ! -s {cluster_cidr} -d {}/32 -p tcp -m comment --comment \"{} cluster IP\" -m tcp --dport {} -j KUBE-MARK-MASQ",
            self.cluster_ip, self.name, self.port
        );
        self.pick_rules(&svc, out);
        if self.node_port.is_some() {
            let ext = self.ext_chain();
            let svl = self.svl_chain();
            let _ = writeln!(
                out,
                "-A {ext} -s {cluster_cidr} -m comment --comment \"pod traffic for {} external destinations\" -j {svc}",
                self.name
            );
            let _ = writeln!(
                out,
                "-A {ext} -m comment --comment \"masquerade LOCAL traffic for {} external destinations\" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ",
                self.name
            );
            let _ = writeln!(
                out,
                "-A {ext} -m comment --comment \"route LOCAL traffic for {} external destinations\" -m addrtype --src-type LOCAL -j {svc}",
                self.name
            );
            let _ = writeln!(out, "-A {ext} -j {svl}");
            self.pick_rules(&svl, out);
        }
        for &ep in &self.endpoints {
            let sep = self.sep_chain(ep);
            let _ = writeln!(
                out,
                "-A {sep} -s {}/32 -m comment --comment \"{}\" -j KUBE-MARK-MASQ",
                ep.0, self.name
            );
            let _ = writeln!(
                out,
                "-A {sep} -p tcp -m comment --comment \"{}\" -m tcp -j DNAT --to-destination {}:{}",
                self.name, ep.0, ep.1
            );
        }
    }
}

fn declare(chain: &str, out: &mut String) {
    let _ = writeln!(out, ":{chain} - [0:0]");
}

fn services_chain(services: &[KubeService], out: &mut String) {
    for s in services {
        s.services_rule(out);
    }
    let _ = writeln!(
        out,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    );
}

/// A complete nat table for `services` (kube-proxy's full sync), to be applied
/// with plain `iptables-restore` (it replaces the whole nat table). `cluster_cidr`
/// is the pod network: clients outside it are masqueraded.
pub fn full_restore(services: &[KubeService], cluster_cidr: &str) -> String {
    let mut out = String::from("*nat\n");
    for c in [
        "PREROUTING ACCEPT",
        "INPUT ACCEPT",
        "OUTPUT ACCEPT",
        "POSTROUTING ACCEPT",
    ] {
        let _ = writeln!(out, ":{c} [0:0]");
    }
    for c in ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"] {
        declare(c, &mut out);
    }
    for s in services {
        for c in s.own_chains() {
            declare(&c, &mut out);
        }
    }
    out.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    );
    services_chain(services, &mut out);
    for s in services {
        s.nodeport_rule(&mut out);
        s.chain_rules(cluster_cidr, &mut out);
    }
    out.push_str("COMMIT\n");
    out
}

/// What kube-proxy 1.28+ writes when one service was added to `services` (its
/// partial sync): `KUBE-SERVICES` and `KUBE-NODEPORTS` rewritten whole, plus the
/// new service's own chains, for `iptables-restore --noflush`.
pub fn add_service_restore(services: &[KubeService], added: &KubeService, cluster_cidr: &str) -> String {
    let mut out = String::from("*nat\n");
    declare("KUBE-SERVICES", &mut out);
    declare("KUBE-NODEPORTS", &mut out);
    for c in added.own_chains() {
        declare(&c, &mut out);
    }
    services_chain(services, &mut out);
    for s in services {
        s.nodeport_rule(&mut out);
    }
    added.chain_rules(cluster_cidr, &mut out);
    out.push_str("COMMIT\n");
    out
}

/// What kube-proxy writes when `removed` left and `services` remain: the shared
/// chains rewritten whole, the removed service's chains flushed and deleted, for
/// `iptables-restore --noflush`.
pub fn remove_service_restore(services: &[KubeService], removed: &KubeService) -> String {
    let mut out = String::from("*nat\n");
    declare("KUBE-SERVICES", &mut out);
    declare("KUBE-NODEPORTS", &mut out);
    let gone = removed.own_chains();
    for c in &gone {
        declare(c, &mut out);
    }
    services_chain(services, &mut out);
    for s in services {
        s.nodeport_rule(&mut out);
    }
    for c in &gone {
        let _ = writeln!(out, "-X {c}");
    }
    out.push_str("COMMIT\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, ip: [u8; 4], eps: usize, node_port: Option<u16>) -> KubeService {
        KubeService {
            name: name.into(),
            cluster_ip: Ipv4Addr::from(ip),
            port: 8080,
            endpoints: (0..eps)
                .map(|i| (Ipv4Addr::new(10, 230, 3, 2 + i as u8), 8080))
                .collect(),
            node_port,
        }
    }

    #[test]
    fn base32_matches_rfc4648() {
        assert_eq!(base32(b""), "");
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32(b"fo"), "MZXQ");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
    }

    #[test]
    fn chain_names_are_kube_proxy_hashes() {
        let s = svc("default/web:http", [10, 231, 0, 3], 2, None);
        let c = s.svc_chain();
        assert!(c.starts_with("KUBE-SVC-") && c.len() == 9 + 16, "{c}");
        assert!(c[9..]
            .chars()
            .all(|ch| ch.is_ascii_uppercase() || ('2'..='7').contains(&ch)));
        // Stable, and distinct per service and per endpoint.
        assert_eq!(c, svc("default/web:http", [10, 231, 0, 9], 1, None).svc_chain());
        assert_ne!(c, svc("default/api:http", [10, 231, 0, 3], 2, None).svc_chain());
        let eps: Vec<_> = s.endpoints.iter().map(|&e| s.sep_chain(e)).collect();
        assert_ne!(eps[0], eps[1]);
        // iptables chain names are at most 28 characters.
        assert!(s.own_chains().iter().all(|c| c.len() <= 28));
    }

    #[test]
    fn full_restore_has_the_kube_proxy_shape() {
        let a = svc("default/a:http", [10, 231, 0, 3], 2, None);
        let b = svc("default/b:http", [10, 231, 0, 4], 3, Some(30080));
        let text = full_restore(&[a.clone(), b.clone()], "10.230.0.0/16");
        assert!(text.starts_with("*nat\n") && text.ends_with("COMMIT\n"));
        assert!(text.contains("-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"));
        assert!(text.contains("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"));
        assert!(text.contains(&format!(
            "-A KUBE-SERVICES -d 10.231.0.3/32 -p tcp -m comment --comment \"default/a:http cluster IP\" -m tcp --dport 8080 -j {}\n",
            a.svc_chain()
        )));
        // The node-port jump is the last rule of KUBE-SERVICES.
        let services: Vec<&str> = text.lines().filter(|l| l.starts_with("-A KUBE-SERVICES ")).collect();
        assert_eq!(services.len(), 3);
        assert!(services[2].ends_with("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"));
        // Random pick: 1/2 then the rest for two endpoints; 1/3, 1/2, rest for three.
        let picks = |s: &KubeService, chain: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.starts_with(&format!("-A {chain} ")) && l.contains("-j KUBE-SEP-"))
                .map(|l| {
                    l.split("--probability ")
                        .nth(1)
                        .map_or("rest".to_string(), |p| p.split(' ').next().unwrap().to_string())
                })
                .chain(std::iter::once(s.name.clone()))
                .collect()
        };
        assert_eq!(picks(&a, &a.svc_chain()), ["0.5000000000", "rest", "default/a:http"]);
        assert_eq!(
            picks(&b, &b.svc_chain()),
            ["0.3333333333", "0.5000000000", "rest", "default/b:http"]
        );
        // Each endpoint chain DNATs to its endpoint.
        for &ep in &b.endpoints {
            assert!(text.contains(&format!(
                "-A {} -p tcp -m comment --comment \"default/b:http\" -m tcp -j DNAT --to-destination {}:8080\n",
                b.sep_chain(ep),
                ep.0
            )));
        }
        // The node port goes through KUBE-EXT to the local endpoints, unmasqueraded.
        assert!(text.contains(&format!(
            "-A KUBE-NODEPORTS -p tcp -m comment --comment \"default/b:http\" -m tcp --dport 30080 -j {}\n",
            b.ext_chain()
        )));
        assert!(text.contains(&format!("-A {} -j {}\n", b.ext_chain(), b.svl_chain())));
        // Every chain used is declared exactly once.
        for c in a.own_chains().iter().chain(b.own_chains().iter()) {
            assert_eq!(text.matches(&format!(":{c} - [0:0]\n")).count(), 1, "{c}");
        }
    }

    #[test]
    fn adding_a_service_rewrites_only_the_shared_chains_and_its_own() {
        let old: Vec<KubeService> = (0..3)
            .map(|i| svc(&format!("default/s{i}:http"), [10, 236, 0, i], 2, None))
            .collect();
        let added = svc("default/new:http", [10, 231, 0, 200], 2, None);
        let mut all = old.clone();
        all.push(added.clone());
        let text = add_service_restore(&all, &added, "10.230.0.0/16");
        assert_eq!(text.lines().filter(|l| l.starts_with("-A KUBE-SERVICES ")).count(), 5);
        for s in &old {
            assert!(
                text.contains(&s.svc_chain()),
                "KUBE-SERVICES still jumps to old services"
            );
            assert!(
                !text.contains(&format!(":{} ", s.svc_chain())),
                "old chains are not rewritten"
            );
        }
        assert!(text.contains(&format!(":{} - [0:0]\n", added.svc_chain())));
        assert!(!text.contains(":OUTPUT"), "built-in chains are left alone (--noflush)");
        assert!(!text.contains("KUBE-POSTROUTING"));

        let text = remove_service_restore(&old, &added);
        assert_eq!(text.lines().filter(|l| l.starts_with("-A KUBE-SERVICES ")).count(), 4);
        assert!(!text.contains(&format!("-j {}", added.svc_chain())));
        for c in added.own_chains() {
            assert!(text.contains(&format!(":{c} - [0:0]\n-")) || text.contains(&format!(":{c} - [0:0]\n:")));
            assert!(text.contains(&format!("-X {c}\n")), "{c} is deleted");
        }
    }
}
