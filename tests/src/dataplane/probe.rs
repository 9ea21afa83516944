//! `warren-dp-probe`: the small TCP/UDP servers and clients of the data-plane
//! tests. Servers run inside backend network namespaces and answer with their
//! name; clients run inside a test cgroup (so the socket programs apply) and print
//! what they saw as `key value...` lines for the test to parse.
//!
//! ```text
//! serve   --name N --tcp PORT --udp PORT --count-file PATH
//! connect --to A:P [--n N] [--rate R --secs S] [--bind ADDR] [--http] [--rst]
//! udp     --to A:P --n N [--connected | --socket-each] [--timeout-ms MS] [--gap-ms MS]
//! loop    --to A:P --stop-file PATH [--http [--path P] [--keepalive]] [--runs]   (--runs: also
//!         `run NAME COUNT` for each stretch of consecutive answers from one backend, in order)
//! hold    --to A:P --n N [--udp] [--from A:P]   (then reads "check" on stdin;
//!         a TCP connection is "alive" when it echoes a line)
//! bind    --to A:P [--udp]            (prints `bound 1` or `error E 1`)
//! dual    --to [::ffff:A]:P --n N [--udp [--connected]]   (AF_INET6 sockets)
//! daemon  --node N --bpffs DIR --cgroup DIR --vip A --port P --backend A...
//! http    --listen A:P [--threads N]
//! crr     --to A:P --ms MS [--warmup-ms MS] [--conns C] [--rate R] [--threads N] [--tls --sni NAME]
//! await   --to A:P [--timeout-ms MS] [--poll-us US]
//! ingress --http A:P --https A:P --cert PEM --key PEM --backend A:P... [--threads N] [--resumption]
//! ```
//!
//! `daemon` stands in for the Warren daemon: it opens the data plane, syncs one
//! service, prints `synced` and waits to be killed. `http`, `crr` and `await` are
//! the HTTP server and load clients of the benchmarks ([`http`]); `ingress` runs
//! Warren's ingress for the ingress benchmark ([`ingress`]).

mod http;
mod ingress;

pub use http::monotonic_ns;

use std::{
    collections::BTreeMap,
    io::{self, BufRead, Read, Write},
    mem,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

struct Args(Vec<String>);

impl Args {
    fn get(&self, flag: &str) -> Option<&str> {
        self.0
            .iter()
            .position(|a| a == flag)
            .and_then(|i| self.0.get(i + 1))
            .map(String::as_str)
    }
    fn req(&self, flag: &str) -> &str {
        self.get(flag)
            .unwrap_or_else(|| panic!("warren-dp-probe: missing {flag}"))
    }
    fn all(&self, flag: &str) -> Vec<&str> {
        self.0
            .windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }
    fn has(&self, flag: &str) -> bool {
        self.0.iter().any(|a| a == flag)
    }
    fn num(&self, flag: &str, default: u64) -> u64 {
        self.get(flag).map_or(default, |v| {
            v.parse().unwrap_or_else(|_| panic!("warren-dp-probe: bad {flag} {v}"))
        })
    }
    fn addr(&self, flag: &str) -> SocketAddrV4 {
        self.req(flag)
            .parse()
            .unwrap_or_else(|_| panic!("warren-dp-probe: bad {flag}"))
    }
}

/// Entry point of the `warren-dp-probe` binary.
pub fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(mode) = argv.first().cloned() else {
        eprintln!("usage: warren-dp-probe serve|connect|udp|loop|hold|daemon|http|crr|await|ingress ...");
        std::process::exit(2);
    };
    let args = Args(argv);
    match mode.as_str() {
        "serve" => serve(&args),
        "connect" => connect(&args),
        "udp" => udp(&args),
        "loop" => connect_loop(&args),
        "hold" => hold(&args),
        "bind" => bind(&args),
        "dual" => dual_stack(&args),
        "daemon" => daemon(&args),
        "http" => http::serve(&args),
        "crr" => http::crr(&args),
        "await" => http::await_answer(&args),
        "ingress" => ingress::serve(&args),
        other => {
            eprintln!("warren-dp-probe: unknown mode {other}");
            std::process::exit(2);
        }
    }
}

fn write_count(path: &PathBuf, tcp: u64, udp: u64) {
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, format!("{tcp} {udp}\n")).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

fn serve(args: &Args) {
    let name = args.req("--name").to_string();
    let count_file = PathBuf::from(args.req("--count-file"));
    let tcp = TcpListener::bind(("0.0.0.0", args.num("--tcp", 0) as u16)).expect("bind tcp");
    let udp = UdpSocket::bind(("0.0.0.0", args.num("--udp", 0) as u16)).expect("bind udp");
    let tcp_count = Arc::new(AtomicU64::new(0));
    let udp_count = Arc::new(AtomicU64::new(0));
    write_count(&count_file, 0, 0);
    {
        let (name, tcp_count, udp_count, count_file) =
            (name.clone(), tcp_count.clone(), udp_count.clone(), count_file.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((_, from)) = udp.recv_from(&mut buf) else {
                    continue;
                };
                let n = udp_count.fetch_add(1, Ordering::SeqCst) + 1;
                write_count(&count_file, tcp_count.load(Ordering::SeqCst), n);
                let _ = udp.send_to(format!("{name}@{}\n", from.ip()).as_bytes(), from);
            }
        });
    }
    println!("listening");
    io::stdout().flush().ok();
    for conn in tcp.incoming() {
        let Ok(mut conn) = conn else { continue };
        let n = tcp_count.fetch_add(1, Ordering::SeqCst) + 1;
        write_count(&count_file, n, udp_count.load(Ordering::SeqCst));
        let reply = match conn.peer_addr() {
            Ok(peer) => format!("{name}@{}\n", peer.ip()),
            Err(_) => format!("{name}@unknown\n"),
        };
        thread::spawn(move || {
            let _ = conn.write_all(reply.as_bytes());
            // Keep the connection until the client closes it, echoing what it
            // sends (hold mode's check).
            let mut buf = [0u8; 64];
            while let Ok(n @ 1..) = conn.read(&mut buf) {
                if conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
}

fn errno_name(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM".into(),
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(libc::ECONNABORTED) => "ECONNABORTED".into(),
        Some(libc::ECONNRESET) => "ECONNRESET".into(),
        Some(libc::ETIMEDOUT) => "ETIMEDOUT".into(),
        Some(libc::EHOSTUNREACH) => "EHOSTUNREACH".into(),
        Some(libc::ENETUNREACH) => "ENETUNREACH".into(),
        Some(libc::EAGAIN) => "EAGAIN".into(),
        Some(libc::EADDRINUSE) => "EADDRINUSE".into(),
        Some(n) => format!("errno{n}"),
        None => format!("{:?}", e.kind()),
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = a.port().to_be();
    sa.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    sa
}

/// A TCP connection, optionally from a bound source address (std cannot bind
/// before connecting).
fn tcp_connect(to: SocketAddrV4, bind: Option<Ipv4Addr>) -> io::Result<TcpStream> {
    let Some(src) = bind else {
        return TcpStream::connect_timeout(&SocketAddr::V4(to), Duration::from_secs(3));
    };
    // SAFETY: plain socket syscalls on a descriptor owned by `fd`.
    unsafe {
        let raw = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(raw);
        let sa = sockaddr(SocketAddrV4::new(src, 0));
        let len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(raw, (&sa as *const libc::sockaddr_in).cast(), len) < 0 {
            return Err(io::Error::last_os_error());
        }
        let sa = sockaddr(to);
        if libc::connect(raw, (&sa as *const libc::sockaddr_in).cast(), len) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(TcpStream::from(fd))
    }
}

/// Makes closing `s` send a RST instead of a FIN (SO_LINGER 0).
fn reset_on_close(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open descriptor with a linger of the right size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_LINGER: {}", io::Error::last_os_error());
}

/// One connection: the backend's name, or the error.
/// With `rst`, it ends with a RST.
fn one(
    to: SocketAddrV4,
    bind: Option<Ipv4Addr>,
    peer_mismatch: &mut u64,
    http: bool,
    rst: bool,
) -> Result<String, String> {
    let mut s = tcp_connect(to, bind).map_err(|e| errno_name(&e))?;
    if rst {
        reset_on_close(&s);
    }
    if s.peer_addr().ok() != Some(SocketAddr::V4(to)) {
        *peer_mismatch += 1;
    }
    s.set_read_timeout(Some(Duration::from_secs(3))).ok();
    if http {
        // An HTTP backend (the test image answers with its hostname): the name is
        // the last line of the body.
        s.write_all(format!("GET / HTTP/1.0\r\nHost: {to}\r\n\r\n").as_bytes())
            .map_err(|e| errno_name(&e))?;
        let mut text = String::new();
        s.read_to_string(&mut text).map_err(|e| errno_name(&e))?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        return body
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .map(str::to_string)
            .ok_or_else(|| "EOF".into());
    }
    let mut line = String::new();
    io::BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| errno_name(&e))?;
    let name = line.trim().to_string();
    if name.is_empty() {
        return Err("EOF".into());
    }
    Ok(name)
}

fn report(names: &BTreeMap<String, u64>, errors: &BTreeMap<String, u64>) {
    for (k, v) in names {
        println!("name {k} {v}");
    }
    for (k, v) in errors {
        println!("error {k} {v}");
    }
}

fn connect(args: &Args) {
    let to = args.addr("--to");
    let http = args.has("--http");
    let bind = args.get("--bind").map(|b| b.parse().expect("--bind"));
    let rst = args.has("--rst");
    let mut names = BTreeMap::new();
    let mut errors = BTreeMap::new();
    let mut mismatch = 0;
    let start = Instant::now();
    let mut attempts = 0u64;
    let mut record = |r: Result<String, String>| match r {
        Ok(n) => *names.entry(n).or_insert(0u64) += 1,
        Err(e) => *errors.entry(e).or_insert(0u64) += 1,
    };
    if let Some(rate) = args.get("--rate") {
        let rate: f64 = rate.parse().expect("--rate");
        let secs = args.num("--secs", 1) as f64;
        let total = (rate * secs) as u64;
        for i in 0..total {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            attempts += 1;
            record(one(to, bind, &mut mismatch, http, rst));
        }
    } else {
        for _ in 0..args.num("--n", 1) {
            attempts += 1;
            record(one(to, bind, &mut mismatch, http, rst));
        }
    }
    report(&names, &errors);
    println!("attempts {attempts}");
    println!("peer_mismatch {mismatch}");
    println!("elapsed_ms {}", start.elapsed().as_millis());
}

fn udp_socket(args: &Args) -> UdpSocket {
    let sock = UdpSocket::bind("0.0.0.0:0").expect("bind udp");
    sock.set_read_timeout(Some(Duration::from_millis(args.num("--timeout-ms", 2000))))
        .ok();
    sock
}

/// `--socket-each`: every datagram from a new socket (a new flow each).
fn udp(args: &Args) {
    let to = args.addr("--to");
    let connected = args.has("--connected");
    let each = args.has("--socket-each");
    let gap = Duration::from_millis(args.num("--gap-ms", 0));
    let mut sock = udp_socket(args);
    if connected {
        sock.connect(to).expect("connect udp");
    }
    let mut names = BTreeMap::new();
    let mut errors = BTreeMap::new();
    let mut sources = BTreeMap::new();
    let mut buf = [0u8; 1500];
    for i in 0..args.num("--n", 1) {
        if each && i > 0 {
            sock = udp_socket(args);
        }
        if i > 0 {
            // The traffic's shape (datagrams this far apart), not a wait.
            std::thread::sleep(gap);
        }
        let msg = format!("ping {i}\n");
        let sent = if connected {
            sock.send(msg.as_bytes())
        } else {
            sock.send_to(msg.as_bytes(), to)
        };
        if let Err(e) = sent {
            *errors.entry(errno_name(&e)).or_insert(0u64) += 1;
            continue;
        }
        let got = if connected {
            sock.recv(&mut buf).map(|n| (n, sock.peer_addr().ok()))
        } else {
            sock.recv_from(&mut buf).map(|(n, from)| (n, Some(from)))
        };
        match got {
            Ok((n, from)) => {
                let name = String::from_utf8_lossy(&buf[..n]).trim().to_string();
                *names.entry(name).or_insert(0u64) += 1;
                let from = from.map_or("unknown".into(), |f| f.to_string());
                *sources.entry(from).or_insert(0u64) += 1;
            }
            Err(e) => *errors.entry(errno_name(&e)).or_insert(0u64) += 1,
        }
    }
    report(&names, &errors);
    for (k, v) in sources {
        println!("from {k} {v}");
    }
}

fn connect_loop(args: &Args) {
    let to = args.addr("--to");
    let http = args.has("--http");
    let path = args.get("--path").unwrap_or("/").to_string();
    let keepalive = args.has("--keepalive");
    let stop = PathBuf::from(args.req("--stop-file"));
    let mut names = BTreeMap::new();
    let mut errors = BTreeMap::new();
    let mut mismatch = 0;
    let mut attempts = 0u64;
    let mut conn: Option<TcpStream> = None;
    let (mut reused, mut retried) = (0u64, 0u64);
    let mut runs: Vec<(String, u64)> = Vec::new();
    println!("started");
    io::stdout().flush().ok();
    while !stop.exists() {
        attempts += 1;
        let r = if keepalive {
            keepalive_request(to, &path, &mut conn, &mut reused, &mut retried)
        } else if http && path != "/" {
            tcp_connect(to, None)
                .map_err(|e| errno_name(&e))
                .and_then(|mut c| http_request(&mut c, to, &path, false).map(|(n, _)| n))
        } else {
            one(to, None, &mut mismatch, http, false)
        };
        match r {
            Ok(n) => {
                match runs.last_mut() {
                    Some((last, c)) if *last == n => *c += 1,
                    _ => runs.push((n.clone(), 1)),
                }
                *names.entry(n).or_insert(0u64) += 1
            }
            Err(e) => {
                // When, for the test to line it up with what it did.
                println!("failure {} {e}", monotonic_ns() / 1_000_000);
                *errors.entry(e).or_insert(0u64) += 1
            }
        }
        thread::sleep(Duration::from_millis(2));
    }
    report(&names, &errors);
    if args.has("--runs") {
        for (n, c) in runs {
            println!("run {n} {c}");
        }
    }
    println!("attempts {attempts}");
    println!("reused {reused}");
    println!("retried {retried}");
}

/// One request on `s`: the last line of the body (the backend's name) and whether
/// the connection may carry another request.
fn http_request(s: &mut TcpStream, to: SocketAddrV4, path: &str, keepalive: bool) -> Result<(String, bool), String> {
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let conn = if keepalive { "keep-alive" } else { "close" };
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {to}\r\nConnection: {conn}\r\n\r\n").as_bytes())
        .map_err(|e| errno_name(&e))?;
    let mut r = io::BufReader::new(&*s);
    let mut status = String::new();
    r.read_line(&mut status).map_err(|e| errno_name(&e))?;
    if status.is_empty() {
        return Err("EOF".into());
    }
    let code = status.split_whitespace().nth(1).unwrap_or("");
    let (mut length, mut close) = (None, !keepalive);
    loop {
        let mut h = String::new();
        r.read_line(&mut h).map_err(|e| errno_name(&e))?;
        let h = h.trim();
        if h.is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().ok();
        }
        if lower.starts_with("connection:") && lower.contains("close") {
            close = true;
        }
    }
    let mut body = Vec::new();
    match length {
        Some(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body).map_err(|e| errno_name(&e))?;
        }
        None => {
            close = true;
            r.read_to_end(&mut body).map_err(|e| errno_name(&e))?;
        }
    }
    if code != "200" {
        return Err(format!("status{code}"));
    }
    let name = String::from_utf8_lossy(&body)
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(str::to_string)
        .ok_or_else(|| "EOF".to_string())?;
    Ok((name, !close))
}

/// A keep-alive client: reuses its connection while the server keeps it open, and,
/// like any HTTP client, retries a request once on a new connection when a reused
/// (idle) connection turns out to have been closed by the server.
fn keepalive_request(
    to: SocketAddrV4,
    path: &str,
    conn: &mut Option<TcpStream>,
    reused: &mut u64,
    retried: &mut u64,
) -> Result<String, String> {
    if let Some(mut s) = conn.take() {
        *reused += 1;
        match http_request(&mut s, to, path, true) {
            Ok((name, again)) => {
                if again {
                    *conn = Some(s);
                }
                return Ok(name);
            }
            Err(_) => *retried += 1,
        }
    }
    let mut s = tcp_connect(to, None).map_err(|e| errno_name(&e))?;
    let (name, again) = http_request(&mut s, to, path, true)?;
    if again {
        *conn = Some(s);
    }
    Ok(name)
}

enum Held {
    Tcp(TcpStream),
    Udp(UdpSocket),
}

fn hold(args: &Args) {
    let to = args.addr("--to");
    let udp = args.has("--udp");
    let mut held = Vec::new();
    for i in 0..args.num("--n", 1) {
        let mut buf = [0u8; 256];
        let (name, sock) = if udp {
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
            s.connect(to).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(3))).ok();
            s.send(format!("hello {i}\n").as_bytes()).expect("send");
            let n = s.recv(&mut buf).expect("recv");
            (String::from_utf8_lossy(&buf[..n]).trim().to_string(), Held::Udp(s))
        } else {
            let s = match args.get("--from") {
                None => tcp_connect(to, None).expect("connect"),
                Some(a) => tcp_connect_from(to, a.parse().expect("--from A:P")).expect("connect from --from"),
            };
            s.set_read_timeout(Some(Duration::from_secs(3))).ok();
            let mut line = String::new();
            io::BufReader::new(&s).read_line(&mut line).expect("read name");
            (line.trim().to_string(), Held::Tcp(s))
        };
        held.push((name, sock));
    }
    println!("ready");
    io::stdout().flush().ok();
    let mut line = String::new();
    io::stdin().read_line(&mut line).ok();
    let mut buf = [0u8; 64];
    for (name, sock) in &mut held {
        let state = match sock {
            Held::Tcp(s) => {
                s.set_nonblocking(true).ok();
                match s.read(&mut buf) {
                    Ok(0) => "eof".to_string(),
                    Ok(_) => "data".to_string(),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => echo(s),
                    Err(e) => errno_name(&e),
                }
            }
            Held::Udp(s) => {
                s.set_nonblocking(true).ok();
                match s.recv(&mut buf) {
                    Ok(_) => "data".to_string(),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => "alive".to_string(),
                    Err(e) => errno_name(&e),
                }
            }
        };
        println!("conn {name} {state}");
    }
}

/// "alive" when the connection still carries a line both ways, else what failed.
fn echo(s: &mut TcpStream) -> String {
    s.set_nonblocking(false).ok();
    s.set_read_timeout(Some(Duration::from_secs(3))).ok();
    if let Err(e) = s.write_all(b"ping\n") {
        return format!("write-{}", errno_name(&e));
    }
    let mut line = String::new();
    match io::BufReader::new(&*s).read_line(&mut line) {
        Ok(_) if line == "ping\n" => "alive".to_string(),
        Ok(0) => "eof".to_string(),
        Ok(_) => format!("echoed-{}", line.trim()),
        Err(e) => format!("echo-{}", errno_name(&e)),
    }
}

/// A TCP connection from the local address and port `from`.
fn tcp_connect_from(to: SocketAddrV4, from: SocketAddrV4) -> io::Result<TcpStream> {
    // SAFETY: plain socket syscalls on a descriptor owned by `fd`.
    unsafe {
        let raw = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(raw);
        let sa = sockaddr(from);
        let len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(raw, (&sa as *const libc::sockaddr_in).cast(), len) < 0 {
            return Err(io::Error::last_os_error());
        }
        let sa = sockaddr(to);
        if libc::connect(raw, (&sa as *const libc::sockaddr_in).cast(), len) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(TcpStream::from(fd))
    }
}

/// AF_INET6 (dual-stack) sockets to an IPv4-mapped address: TCP connections, or
/// UDP datagrams from one socket.
fn dual_stack(args: &Args) {
    use std::net::SocketAddrV6;
    let to: SocketAddrV6 = args.req("--to").parse().expect("--to [::ffff:a.b.c.d]:port");
    let mut names = BTreeMap::new();
    let mut errors = BTreeMap::new();
    let mut sources = BTreeMap::new();
    let mut mismatch = 0u64;
    let mut record = |r: io::Result<(String, Option<SocketAddr>)>| match r {
        Ok((name, peer)) => {
            *names.entry(name).or_insert(0u64) += 1;
            if peer != Some(SocketAddr::V6(to)) {
                mismatch += 1;
            }
            *sources
                .entry(peer.map_or("unknown".into(), |p| p.to_string()))
                .or_insert(0u64) += 1;
        }
        Err(e) => *errors.entry(errno_name(&e)).or_insert(0u64) += 1,
    };
    let n = args.num("--n", 1);
    if args.has("--udp") {
        let sock = UdpSocket::bind("[::]:0").expect("bind [::]:0");
        sock.set_read_timeout(Some(Duration::from_secs(2))).ok();
        let connected = args.has("--connected");
        if connected {
            sock.connect(to).expect("connect udp");
        }
        let mut buf = [0u8; 1500];
        for i in 0..n {
            record((|| {
                let msg = format!("ping {i}\n");
                if connected {
                    sock.send(msg.as_bytes())?;
                    let got = sock.recv(&mut buf)?;
                    Ok((
                        String::from_utf8_lossy(&buf[..got]).trim().to_string(),
                        sock.peer_addr().ok(),
                    ))
                } else {
                    sock.send_to(msg.as_bytes(), to)?;
                    let (got, from) = sock.recv_from(&mut buf)?;
                    Ok((String::from_utf8_lossy(&buf[..got]).trim().to_string(), Some(from)))
                }
            })());
        }
    } else {
        for _ in 0..n {
            record((|| {
                let s = TcpStream::connect_timeout(&SocketAddr::V6(to), Duration::from_secs(3))?;
                let peer = s.peer_addr().ok();
                s.set_read_timeout(Some(Duration::from_secs(3))).ok();
                let mut line = String::new();
                io::BufReader::new(&s).read_line(&mut line)?;
                Ok((line.trim().to_string(), peer))
            })());
        }
    }
    report(&names, &errors);
    for (k, v) in sources {
        println!("from {k} {v}");
    }
    println!("peer_mismatch {mismatch}");
}

fn bind(args: &Args) {
    let to = args.addr("--to");
    let r = if args.has("--udp") {
        UdpSocket::bind(to).map(drop)
    } else {
        TcpListener::bind(to).map(drop)
    };
    match r {
        Ok(()) => println!("bound 1"),
        Err(e) => println!("error {} 1", errno_name(&e)),
    }
}

fn daemon(args: &Args) {
    use warren::dataplane::{
        Backend, BackendGroup, Dataplane, DataplaneConfig, EbpfDataplane, Protocol, ServiceEntry, ServicePort,
    };
    let mut cfg = DataplaneConfig::new(args.req("--node"));
    cfg.bpffs_dir = PathBuf::from(args.req("--bpffs"));
    cfg.cgroup_root = PathBuf::from(args.req("--cgroup"));
    let dp = EbpfDataplane::open(cfg).expect("open data plane");
    let svc = ServiceEntry {
        id: 1,
        name: "web".into(),
        vip: Some(args.req("--vip").parse().expect("--vip")),
        ports: vec![ServicePort {
            protocol: Protocol::Tcp,
            target: args.num("--port", 0) as u16,
            published: None,
            host_mode: false,
        }],
        backends: args
            .all("--backend")
            .iter()
            .map(|a| Backend {
                addr: a.parse().expect("--backend"),
                group: BackendGroup::Stable,
                local: true,
                draining: false,
            })
            .collect(),
        canary_weight: 0,
        rate_limit: None,
        prefer_local: false,
    };
    dp.sync(&[svc]).expect("sync");
    let adopted = dp.status().programs.iter().filter(|p| p.adopted).count();
    println!("adopted {adopted}");
    println!("synced");
    io::stdout().flush().ok();
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}
