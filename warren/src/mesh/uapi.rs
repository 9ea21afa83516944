//! WireGuard's cross-platform userspace API (the `get=1` / `set=1` text protocol on
//! `<run dir>/<interface>.sock` that wireguard-go and `wg` speak): requests written
//! from a [`DeviceUpdate`], answers parsed into a [`DeviceState`]. Not the process
//! that serves the socket (`wggo`).
//!
//! wireguard-control's own userspace backend hard-codes `/var/run/wireguard` and
//! starts a daemonised wireguard-go of its own, which fits neither supervision nor
//! several nodes per machine; the protocol is small enough to speak here.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::backend::{DeviceState, DeviceUpdate, PeerState};
use super::error::WgError;
use super::keys::PublicKey;

/// How long one exchange may take before the socket counts as hung.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The UAPI socket of `iface` under `run_dir`.
pub fn socket_path(run_dir: &Path, iface: &str) -> PathBuf {
    run_dir.join(format!("{iface}.sock"))
}

/// The `set=1` request for `u`.
pub fn set_request(u: &DeviceUpdate) -> String {
    let mut r = String::from("set=1\n");
    if let Some(k) = &u.private_key {
        let _ = writeln!(r, "private_key={}", k.to_hex());
    }
    if let Some(p) = u.listen_port {
        let _ = writeln!(r, "listen_port={p}");
    }
    for p in &u.peers {
        let _ = writeln!(r, "public_key={}", p.public_key.to_hex());
        if p.remove {
            r.push_str("remove=true\n");
            continue;
        }
        if let Some(e) = p.endpoint {
            let _ = writeln!(r, "endpoint={e}");
        }
        if let Some(k) = p.keepalive {
            if p.kick && k > 0 {
                // 0 then k: the implementation sends a keepalive at once.
                r.push_str("persistent_keepalive_interval=0\n");
            }
            let _ = writeln!(r, "persistent_keepalive_interval={k}");
        }
        if let Some(ips) = &p.allowed_ips {
            r.push_str("replace_allowed_ips=true\n");
            for ip in ips {
                let _ = writeln!(r, "allowed_ip={ip}");
            }
        }
    }
    r.push('\n');
    r
}

/// Parses the answer to `get=1` (everything up to and including `errno=`).
pub fn parse_get(socket: &Path, text: &str) -> Result<DeviceState, WgError> {
    let bad = |line: &str| WgError::UapiParse {
        socket: socket.to_path_buf(),
        line: line.to_string(),
    };
    let mut dev = DeviceState::default();
    let mut peer: Option<PeerState> = None;
    let mut hs_sec: u64 = 0;
    let mut hs_nsec: u32 = 0;
    let finish = |peer: &mut Option<PeerState>, dev: &mut DeviceState, sec: &mut u64, nsec: &mut u32| {
        if let Some(mut p) = peer.take() {
            if *sec > 0 || *nsec > 0 {
                p.last_handshake = Some(SystemTime::UNIX_EPOCH + Duration::new(*sec, *nsec));
            }
            dev.peers.push(p);
        }
        *sec = 0;
        *nsec = 0;
    };
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or_else(|| bad(line))?;
        match k {
            "private_key" => {
                let key = PublicKey::from_hex(v).ok_or_else(|| bad(line))?;
                // All zeros: no key set yet.
                if key.0 != [0; 32] {
                    let private = super::keys::PrivateKey::from_bytes(key.0);
                    dev.public_key = Some(private.public_key());
                }
            }
            "listen_port" => dev.listen_port = v.parse().map_err(|_| bad(line))?,
            "fwmark" => {}
            "public_key" => {
                finish(&mut peer, &mut dev, &mut hs_sec, &mut hs_nsec);
                peer = Some(PeerState::new(PublicKey::from_hex(v).ok_or_else(|| bad(line))?));
            }
            "errno" => {
                finish(&mut peer, &mut dev, &mut hs_sec, &mut hs_nsec);
                let errno: i32 = v.parse().map_err(|_| bad(line))?;
                if errno != 0 {
                    return Err(WgError::UapiErrno {
                        socket: socket.to_path_buf(),
                        op: "get",
                        errno,
                    });
                }
                return Ok(dev);
            }
            _ => {
                let Some(p) = peer.as_mut() else {
                    // Device keys this client does not use.
                    continue;
                };
                match k {
                    "endpoint" => p.endpoint = Some(v.parse().map_err(|_| bad(line))?),
                    "allowed_ip" => p.allowed_ips.push(v.parse().map_err(|_| bad(line))?),
                    "persistent_keepalive_interval" => p.keepalive = v.parse().map_err(|_| bad(line))?,
                    "last_handshake_time_sec" => hs_sec = v.parse().map_err(|_| bad(line))?,
                    "last_handshake_time_nsec" => hs_nsec = v.parse().map_err(|_| bad(line))?,
                    "rx_bytes" => p.rx_bytes = v.parse().map_err(|_| bad(line))?,
                    "tx_bytes" => p.tx_bytes = v.parse().map_err(|_| bad(line))?,
                    // preshared_key, protocol_version and anything newer.
                    _ => {}
                }
            }
        }
    }
    Err(bad("(end of answer without errno)"))
}

fn connect(socket: &Path) -> Result<UnixStream, WgError> {
    let err = |source| WgError::Uapi {
        socket: socket.to_path_buf(),
        source,
    };
    let s = UnixStream::connect(socket).map_err(err)?;
    s.set_read_timeout(Some(IO_TIMEOUT)).map_err(err)?;
    s.set_write_timeout(Some(IO_TIMEOUT)).map_err(err)?;
    Ok(s)
}

/// Reads lines up to the blank line that ends an answer.
fn read_answer(socket: &Path, s: UnixStream) -> Result<String, WgError> {
    let mut r = BufReader::new(s);
    let mut out = String::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).map_err(|source| WgError::Uapi {
            socket: socket.to_path_buf(),
            source,
        })?;
        if n == 0 || line == "\n" {
            return Ok(out);
        }
        out.push_str(&line);
    }
}

/// `get=1` on `socket`. Blocking: callers run it off the async runtime.
pub fn get(socket: &Path) -> Result<DeviceState, WgError> {
    let mut s = connect(socket)?;
    s.write_all(b"get=1\n\n").map_err(|source| WgError::Uapi {
        socket: socket.to_path_buf(),
        source,
    })?;
    parse_get(socket, &read_answer(socket, s)?)
}

/// `set=1` on `socket`; the implementation applies a request whole or not at all
/// per line, and answers with an errno.
pub fn set(socket: &Path, u: &DeviceUpdate) -> Result<(), WgError> {
    let mut s = connect(socket)?;
    s.write_all(set_request(u).as_bytes()).map_err(|source| WgError::Uapi {
        socket: socket.to_path_buf(),
        source,
    })?;
    let answer = read_answer(socket, s)?;
    let line = answer.lines().next().unwrap_or("");
    match line.strip_prefix("errno=").map(str::parse::<i32>) {
        Some(Ok(0)) => Ok(()),
        Some(Ok(errno)) => Err(WgError::UapiErrno {
            socket: socket.to_path_buf(),
            op: "set",
            errno,
        }),
        _ => Err(WgError::UapiParse {
            socket: socket.to_path_buf(),
            line: line.to_string(),
        }),
    }
}

/// Whether something answers on `socket` (wireguard-go is up).
pub fn answers(socket: &Path) -> bool {
    get(socket).is_ok()
}

#[cfg(test)]
mod tests {
    use super::super::backend::PeerUpdate;
    use super::super::keys::PrivateKey;
    use super::*;

    #[test]
    fn a_set_request_reads_like_wg_set() {
        let me = PrivateKey::from_bytes([1; 32]);
        let peer = PublicKey([2; 32]);
        let gone = PublicKey([3; 32]);
        let u = DeviceUpdate {
            private_key: Some(me.clone()),
            listen_port: Some(51820),
            peers: vec![
                PeerUpdate {
                    public_key: peer,
                    remove: false,
                    endpoint: Some("10.0.0.2:51820".parse().unwrap()),
                    keepalive: Some(25),
                    allowed_ips: Some(vec!["10.88.2.0/24".parse().unwrap()]),
                    kick: true,
                },
                PeerUpdate::remove(gone),
            ],
        };
        let want = format!(
            "set=1\nprivate_key={}\nlisten_port=51820\npublic_key={}\nendpoint=10.0.0.2:51820\n\
             persistent_keepalive_interval=0\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.88.2.0/24\n\
             public_key={}\nremove=true\n\n",
            "01".repeat(32),
            "02".repeat(32),
            "03".repeat(32)
        );
        assert_eq!(set_request(&u), want);
    }

    #[test]
    fn a_get_answer_parses_with_stats() {
        let sock = Path::new("/run/wireguard/wg.sock");
        let me = PrivateKey::from_bytes([7; 32]);
        let text = format!(
            "private_key={}\nlisten_port=51821\npublic_key={}\npreshared_key={}\nprotocol_version=1\n\
             endpoint=192.0.2.1:4000\nlast_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\n\
             tx_bytes=10\nrx_bytes=20\npersistent_keepalive_interval=25\nallowed_ip=10.88.2.0/24\n\
             public_key={}\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\n\
             persistent_keepalive_interval=0\nerrno=0\n",
            me.to_hex(),
            "02".repeat(32),
            "00".repeat(32),
            "03".repeat(32)
        );
        let d = parse_get(sock, &text).unwrap();
        assert_eq!(d.public_key, Some(me.public_key()));
        assert_eq!(d.listen_port, 51821);
        assert_eq!(d.peers.len(), 2);
        let p = &d.peers[0];
        assert_eq!(p.public_key, PublicKey([2; 32]));
        assert_eq!(p.endpoint, Some("192.0.2.1:4000".parse().unwrap()));
        assert_eq!(p.keepalive, 25);
        assert_eq!((p.rx_bytes, p.tx_bytes), (20, 10));
        assert_eq!(
            p.last_handshake,
            Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5))
        );
        assert_eq!(p.allowed_ips, vec!["10.88.2.0/24".parse::<ipnet::IpNet>().unwrap()]);
        assert_eq!(d.peers[1].last_handshake, None);
        assert_eq!(d.peers[1].endpoint, None);

        let e = parse_get(sock, "listen_port=x\nerrno=0\n").unwrap_err().to_string();
        assert_eq!(e, "uapi socket /run/wireguard/wg.sock: cannot parse \"listen_port=x\"");
        let e = parse_get(sock, "errno=19\n").unwrap_err();
        assert!(matches!(e, WgError::UapiErrno { errno: 19, .. }), "{e}");
        assert!(
            parse_get(sock, "listen_port=1\n").is_err(),
            "an answer without errno is cut short"
        );
    }
}
