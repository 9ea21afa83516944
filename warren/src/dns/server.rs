//! The DNS server itself: UDP and TCP listeners (hickory-server), the request handler
//! that answers from the current [`DnsTable`] or forwards, the atomically swapped
//! table, and the query counter. Owns sockets and DNS messages; name matching is in
//! `table`, the upstream exchange in `forward`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Message, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::A;
use hickory_server::proto::rr::{DNSClass, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use prometheus::{IntCounterVec, Opts, Registry};
use tokio::net::{TcpListener, UdpSocket};

use super::forward::{Forwarder, UPSTREAM_UDP_PAYLOAD};
use super::table::{DnsTable, NameKind, Resolution};
use super::{DnsConfig, DnsError};

/// A TCP client that sends nothing for this long is disconnected.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 16;

/// The `result` label values of the query counter.
const RESULT_LOCAL: &str = "local";
const RESULT_FORWARDED: &str = "forwarded";
const RESULT_NXDOMAIN: &str = "nxdomain";
const RESULT_ERROR: &str = "error";

/// The query counter, `dns_queries_total{result}` with `result` one of `local`
/// (answered from the table), `forwarded` (an upstream's answer passed back),
/// `nxdomain` (an upstream said the name does not exist) and `error` (no upstream
/// answered, or the query was malformed or unsupported). On the node's registry,
/// whose prefix is `warren`, it is `warren_dns_queries_total`.
#[derive(Clone, Debug)]
pub struct DnsMetrics {
    queries: IntCounterVec,
}

impl DnsMetrics {
    /// A counter registered nowhere (for a server whose metrics are not exported).
    pub fn unregistered() -> DnsMetrics {
        let queries = IntCounterVec::new(
            Opts::new("dns_queries_total", "DNS queries answered by this node, by result."),
            &["result"],
        )
        .expect("static metric definition is valid");
        for result in [RESULT_LOCAL, RESULT_FORWARDED, RESULT_NXDOMAIN, RESULT_ERROR] {
            queries.with_label_values(&[result]);
        }
        DnsMetrics { queries }
    }

    /// The counter, registered on `registry`. Register once per registry and reuse the
    /// value for every server started on it (a second registration fails).
    pub fn register(registry: &Registry) -> Result<DnsMetrics, DnsError> {
        let m = DnsMetrics::unregistered();
        registry.register(Box::new(m.queries.clone()))?;
        Ok(m)
    }

    /// The number of queries counted with `result` so far.
    pub fn queries(&self, result: &str) -> u64 {
        self.queries.with_label_values(&[result]).get()
    }

    fn count(&self, result: &str) {
        self.queries.with_label_values(&[result]).inc();
    }
}

/// A handle that replaces the table a running server answers from; cheap to clone and
/// `Send`, so the component that watches the cluster state can own one.
#[derive(Clone, Debug)]
pub struct DnsUpdater {
    // The lock is held only to clone or replace the Arc, never while a query is
    // answered, so readers never wait for more than a pointer swap.
    table: Arc<RwLock<Arc<DnsTable>>>,
}

impl DnsUpdater {
    fn new(table: DnsTable) -> DnsUpdater {
        DnsUpdater {
            table: Arc::new(RwLock::new(Arc::new(table))),
        }
    }

    /// Replaces the whole table; queries after this see only the new one.
    pub fn update(&self, table: DnsTable) {
        let new = Arc::new(table);
        let old = {
            let mut slot = self.table.write().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *slot, new)
        };
        // The old table is freed here, outside the lock (unless a query still holds it).
        drop(old);
    }

    /// The table queries are answered from now.
    pub fn current(&self) -> Arc<DnsTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A running DNS server (UDP and TCP on one address). Dropping it stops it as well;
/// [`DnsServer::shutdown`] waits until the listeners are closed.
pub struct DnsServer {
    server: Server<Handler>,
    updater: DnsUpdater,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl DnsServer {
    /// Binds UDP and TCP on `cfg.bind` and serves `table` on the current tokio
    /// runtime, with a query counter registered nowhere.
    pub async fn start(cfg: DnsConfig, table: DnsTable) -> Result<DnsServer, DnsError> {
        DnsServer::start_with_metrics(cfg, table, DnsMetrics::unregistered()).await
    }

    /// [`DnsServer::start`], counting queries in `metrics`.
    pub async fn start_with_metrics(
        cfg: DnsConfig,
        table: DnsTable,
        metrics: DnsMetrics,
    ) -> Result<DnsServer, DnsError> {
        let cfg = cfg.normalized()?;
        let udp = UdpSocket::bind(cfg.bind)
            .await
            .map_err(|source| DnsError::BindUdp { addr: cfg.bind, source })?;
        let local_addr = udp
            .local_addr()
            .map_err(|source| DnsError::BindUdp { addr: cfg.bind, source })?;
        // TCP on the port UDP got, so that port 0 yields one address for both.
        let tcp = TcpListener::bind(local_addr)
            .await
            .map_err(|source| DnsError::BindTcp {
                addr: local_addr,
                source,
            })?;
        if cfg.upstreams.is_empty() {
            tracing::warn!(addr = %local_addr, "dns: no upstream resolvers: names that are not Warren's get SERVFAIL");
        }
        let updater = DnsUpdater::new(table);
        let handler = Handler {
            table: updater.clone(),
            search_domains: cfg.search_domains.clone(),
            ttl: cfg.ttl,
            forwarder: Forwarder::new(cfg.upstreams.clone(), cfg.upstream_timeout),
            rotation: AtomicUsize::new(0),
            metrics,
        };
        let mut server = Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
        tracing::info!(
            addr = %local_addr,
            upstreams = ?cfg.upstreams,
            search_domains = ?cfg.search_domains,
            "dns: serving"
        );
        Ok(DnsServer {
            server,
            updater,
            local_addr,
        })
    }

    /// The address UDP and TCP listen on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Replaces the table; see [`DnsUpdater::update`].
    pub fn update(&self, table: DnsTable) {
        self.updater.update(table);
    }

    /// A handle to replace the table from elsewhere.
    pub fn updater(&self) -> DnsUpdater {
        self.updater.clone()
    }

    /// Stops accepting queries, closes the sockets and waits for the listener tasks.
    pub async fn shutdown(mut self) -> Result<(), DnsError> {
        let result = self.server.shutdown_gracefully().await;
        tracing::info!(addr = %self.local_addr, "dns: stopped");
        result.map_err(|e| DnsError::Server(e.to_string()))
    }
}

struct Handler {
    table: DnsUpdater,
    search_domains: Vec<String>,
    ttl: u32,
    forwarder: Forwarder,
    rotation: AtomicUsize,
    metrics: DnsMetrics,
}

/// What to send back, before it is encoded against the request.
struct Reply {
    metadata: Metadata,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
    result: &'static str,
}

impl Reply {
    fn error(request: &Request, code: ResponseCode) -> Reply {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = code;
        Reply {
            metadata,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            result: RESULT_ERROR,
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut response: R) -> ResponseInfo {
        let mut reply = self.reply(request).await;

        let mut edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            // Capped like the upstream side: a bigger answer is truncated and the client
            // asks again over TCP, rather than risking fragments.
            e.set_max_payload(req.max_payload().clamp(512, UPSTREAM_UDP_PAYLOAD));
            e
        });
        let code = reply.metadata.response_code;
        if code.high() != 0 {
            match edns.as_mut() {
                Some(e) => {
                    e.set_rcode_high(code.high());
                }
                // Extended codes need EDNS to be expressed at all.
                None => reply.metadata.response_code = ResponseCode::ServFail,
            }
        }

        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let message = builder.build(
            reply.metadata,
            reply.answers.iter(),
            reply.authorities.iter(),
            std::iter::empty(),
            reply.additionals.iter(),
        );
        match response.send_response(message).await {
            Ok(info) => {
                self.metrics.count(reply.result);
                info
            }
            Err(error) => {
                tracing::debug!(src = %request.src(), %error, "dns: cannot send response");
                self.metrics.count(RESULT_ERROR);
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

impl Handler {
    async fn reply(&self, request: &Request) -> Reply {
        if request.metadata.op_code != OpCode::Query {
            return Reply::error(request, ResponseCode::NotImp);
        }
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            return Reply::error(request, ResponseCode::BADVERS);
        }
        let [query] = request.queries.queries() else {
            return Reply::error(request, ResponseCode::FormErr);
        };
        let query = query.original();

        if query.query_class == DNSClass::IN {
            let rotation = self.rotation.fetch_add(1, Ordering::Relaxed);
            let table = self.table.current();
            if let Resolution::Local { kind, addrs } =
                table.resolve(&query.name.to_ascii(), &self.search_domains, rotation)
            {
                let ttl = match kind {
                    NameKind::Vip => self.ttl,
                    // Task lists change as tasks come and go, and dnsrr only spreads
                    // clients if they ask again.
                    NameKind::Dnsrr | NameKind::Tasks | NameKind::Slot => 0,
                };
                // Warren is IPv4-only for now: AAAA and every other type get NOERROR with
                // no records, which tells resolvers the name exists.
                let answers = match query.query_type {
                    RecordType::A | RecordType::ANY => addrs
                        .iter()
                        .map(|a| Record::from_rdata(query.name.clone(), ttl, RData::A(A(*a))))
                        .collect(),
                    _ => Vec::new(),
                };
                tracing::debug!(name = %query.name, qtype = %query.query_type, ?kind, answers = answers.len(), "dns: local answer");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.authoritative = true;
                metadata.recursion_available = self.forwarder.has_upstreams();
                return Reply {
                    metadata,
                    answers,
                    authorities: Vec::new(),
                    additionals: Vec::new(),
                    result: RESULT_LOCAL,
                };
            }
        }

        match self
            .forwarder
            .forward(
                query,
                request.metadata.recursion_desired,
                request.metadata.checking_disabled,
            )
            .await
        {
            Ok(answer) => forwarded(request, answer),
            Err(error) => {
                tracing::debug!(name = %query.name, %error, "dns: cannot forward");
                Reply::error(request, ResponseCode::ServFail)
            }
        }
    }
}

/// The client's reply from an upstream's answer: its code and sections, our header.
fn forwarded(request: &Request, answer: Message) -> Reply {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = answer.metadata.response_code;
    metadata.recursion_available = answer.metadata.recursion_available;
    let result = if answer.metadata.response_code == ResponseCode::NXDomain {
        RESULT_NXDOMAIN
    } else {
        RESULT_FORWARDED
    };
    Reply {
        metadata,
        answers: answer.answers,
        authorities: answer.authorities,
        additionals: answer.additionals,
        result,
    }
}

#[cfg(test)]
mod tests {
    //! The real server on loopback sockets, queried with hickory-proto messages; the
    //! upstream is a small responder on loopback too.

    use super::*;
    use hickory_server::proto::op::{MessageType, Query};
    use hickory_server::proto::rr::Name;
    use std::net::Ipv4Addr;
    use std::sync::atomic::AtomicU64;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn cfg(upstreams: Vec<SocketAddr>) -> DnsConfig {
        DnsConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            upstreams,
            search_domains: vec!["warren".into()],
            ttl: 5,
            upstream_timeout: Duration::from_millis(500),
        }
    }

    fn table(web_vip: &str) -> DnsTable {
        let mut b = DnsTable::builder();
        b.service(
            "web",
            Some(ip(web_vip)),
            vec![(1, ip("10.88.1.2")), (2, ip("10.88.1.3"))],
        )
        .unwrap()
        .service(
            "db",
            None,
            vec![(1, ip("10.88.2.2")), (2, ip("10.88.2.3")), (3, ip("10.88.2.4"))],
        )
        .unwrap()
        .service("idle", None, vec![])
        .unwrap();
        let many = (0..60u8)
            .map(|i| (u64::from(i) + 1, Ipv4Addr::new(10, 88, 9, i + 2)))
            .collect();
        b.service("many", None, many).unwrap();
        b.build()
    }

    #[derive(Clone, Copy)]
    enum Via {
        Udp { edns: bool },
        Tcp,
    }

    async fn ask(server: SocketAddr, name: &str, qtype: RecordType, via: Via) -> Message {
        let mut msg = Message::query();
        msg.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        msg.metadata.recursion_desired = true;
        if matches!(via, Via::Udp { edns: true }) {
            let mut e = Edns::new();
            e.set_max_payload(4096);
            msg.set_edns(e);
        }
        let bytes = msg.to_vec().unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), async {
            match via {
                Via::Udp { .. } => {
                    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                    s.connect(server).await.unwrap();
                    s.send(&bytes).await.unwrap();
                    let mut buf = vec![0u8; 65535];
                    let n = s.recv(&mut buf).await.unwrap();
                    buf.truncate(n);
                    buf
                }
                Via::Tcp => {
                    let mut s = TcpStream::connect(server).await.unwrap();
                    s.write_all(&(bytes.len() as u16).to_be_bytes()).await.unwrap();
                    s.write_all(&bytes).await.unwrap();
                    let mut len = [0u8; 2];
                    s.read_exact(&mut len).await.unwrap();
                    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
                    s.read_exact(&mut buf).await.unwrap();
                    buf
                }
            }
        })
        .await
        .expect("the server answers within 5 s");
        let answer = Message::from_vec(&answer).unwrap();
        assert_eq!(answer.metadata.id, msg.metadata.id);
        assert_eq!(answer.metadata.message_type, MessageType::Response);
        answer
    }

    fn a_records(m: &Message) -> Vec<Ipv4Addr> {
        m.answers
            .iter()
            .map(|r| match &r.data {
                RData::A(a) => a.0,
                other => panic!("not an A record: {other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn answers_service_names_over_udp_and_tcp() {
        let srv = DnsServer::start(cfg(vec![]), table("10.99.0.1")).await.unwrap();
        let addr = srv.local_addr();
        for via in [Via::Udp { edns: false }, Via::Udp { edns: true }, Via::Tcp] {
            let m = ask(addr, "web.", RecordType::A, via).await;
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            assert!(m.metadata.authoritative);
            assert_eq!(a_records(&m), vec![ip("10.99.0.1")]);
            assert_eq!(m.answers[0].ttl, 5);
            assert_eq!(m.edns.is_some(), matches!(via, Via::Udp { edns: true }));

            let m = ask(addr, "Tasks.Web.Warren.", RecordType::A, via).await;
            let mut got = a_records(&m);
            got.sort();
            assert_eq!(got, vec![ip("10.88.1.2"), ip("10.88.1.3")]);
            assert!(m.answers.iter().all(|r| r.ttl == 0));

            let m = ask(addr, "web.2.", RecordType::A, via).await;
            assert_eq!(a_records(&m), vec![ip("10.88.1.3")]);
        }
        srv.shutdown().await.unwrap();
    }

    /// Fuzzing the query path (issue 16): random datagrams, valid queries with bytes
    /// flipped, and queries for random names and types over UDP and TCP; the server
    /// answers or ignores each and still answers a valid query after all of them.
    #[tokio::test]
    async fn arbitrary_and_mutated_queries_never_stop_the_server() {
        use proptest::strategy::{Strategy, ValueTree};
        use proptest::test_runner::TestRunner;
        let srv = DnsServer::start(cfg(vec![]), table("10.99.0.1")).await.unwrap();
        let addr = srv.local_addr();
        let cases = crate::fuzz::cases() as usize;
        let mut runner = TestRunner::deterministic();
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut valid = Message::query();
        valid.add_query(Query::query(
            Name::from_ascii("tasks.web.warren.").unwrap(),
            RecordType::A,
        ));
        let valid = valid.to_vec().unwrap();
        let random = proptest::collection::vec(proptest::num::u8::ANY, 0..600);
        let flips = proptest::collection::vec((0..valid.len(), proptest::num::u8::ANY), 1..6);
        for i in 0..cases {
            let datagram = if i % 2 == 0 {
                random.new_tree(&mut runner).unwrap().current()
            } else {
                let mut d = valid.clone();
                for (at, b) in flips.new_tree(&mut runner).unwrap().current() {
                    d[at] = b;
                }
                d
            };
            sock.send_to(&datagram, addr).await.unwrap();
        }
        let names = "[a-zA-Z0-9.*_-]{1,60}";
        for i in 0..(cases / 10).max(10) {
            let name = names.new_tree(&mut runner).unwrap().current();
            let Ok(name) = Name::from_ascii(&name) else { continue };
            let qtype = [
                RecordType::A,
                RecordType::AAAA,
                RecordType::SRV,
                RecordType::PTR,
                RecordType::ANY,
            ][i % 5];
            let mut msg = Message::query();
            msg.add_query(Query::query(name, qtype));
            sock.send_to(&msg.to_vec().unwrap(), addr).await.unwrap();
        }
        // The flood may overflow the socket's receive queue, so the first probe can
        // be dropped as on any loaded resolver: ask as a stub resolver does, again
        // after 500 ms, and expect an answer once the queue has drained.
        let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut q = Message::query();
        q.add_query(Query::query(Name::from_ascii("web.").unwrap(), RecordType::A));
        let q = q.to_vec().unwrap();
        let mut answered = false;
        for _ in 0..20 {
            probe.send_to(&q, addr).await.unwrap();
            let mut buf = vec![0u8; 4096];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), probe.recv(&mut buf)).await {
                let m = Message::from_vec(&buf[..n]).unwrap();
                assert_eq!(a_records(&m), vec![ip("10.99.0.1")]);
                answered = true;
                break;
            }
        }
        assert!(answered, "the server stopped answering after the fuzzed queries");
        for via in [Via::Udp { edns: false }, Via::Tcp] {
            let m = ask(addr, "web.", RecordType::A, via).await;
            assert_eq!(a_records(&m), vec![ip("10.99.0.1")]);
        }
        srv.shutdown().await.unwrap();
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 2000, failure_persistence: None, ..Default::default() })]
        #[test]
        fn resolving_any_name_never_panics(name in proptest::prelude::any::<String>(), rotation in 0usize..1000) {
            let _ = table("10.99.0.1").resolve(&name, &["warren".to_string()], rotation);
        }
    }

    #[tokio::test]
    async fn dnsrr_answers_rotate_between_queries() {
        let srv = DnsServer::start(cfg(vec![]), table("10.99.0.1")).await.unwrap();
        let mut firsts = std::collections::BTreeSet::new();
        for _ in 0..3 {
            let m = ask(srv.local_addr(), "db.warren.", RecordType::A, Via::Udp { edns: false }).await;
            let got = a_records(&m);
            let mut sorted = got.clone();
            sorted.sort();
            assert_eq!(sorted, vec![ip("10.88.2.2"), ip("10.88.2.3"), ip("10.88.2.4")]);
            assert!(m.answers.iter().all(|r| r.ttl == 0));
            firsts.insert(got[0]);
        }
        assert_eq!(firsts.len(), 3, "each of three queries starts at another task");
    }

    #[tokio::test]
    async fn aaaa_and_empty_services_answer_noerror_without_records() {
        let srv = DnsServer::start(cfg(vec![]), table("10.99.0.1")).await.unwrap();
        for (name, qtype) in [
            ("web.", RecordType::AAAA),
            ("tasks.db.", RecordType::AAAA),
            ("web.", RecordType::MX),
            ("idle.", RecordType::A),
            ("tasks.idle.warren.", RecordType::A),
            ("web.7.", RecordType::A),
        ] {
            let m = ask(srv.local_addr(), name, qtype, Via::Udp { edns: true }).await;
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name} {qtype}");
            assert!(m.answers.is_empty(), "{name} {qtype}: {:?}", m.answers);
            assert!(m.metadata.authoritative);
        }
    }

    #[tokio::test]
    async fn update_swaps_the_table() {
        let srv = DnsServer::start(cfg(vec![]), table("10.99.0.1")).await.unwrap();
        let m = ask(srv.local_addr(), "web.", RecordType::A, Via::Tcp).await;
        assert_eq!(a_records(&m), vec![ip("10.99.0.1")]);
        srv.update(table("10.99.0.42"));
        let m = ask(srv.local_addr(), "web.", RecordType::A, Via::Tcp).await;
        assert_eq!(a_records(&m), vec![ip("10.99.0.42")]);
        // From another handle, to an empty table: web is no longer ours.
        srv.updater().update(DnsTable::default());
        let m = ask(srv.local_addr(), "web.", RecordType::A, Via::Tcp).await;
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::ServFail,
            "forwarded, and no upstream"
        );
    }

    #[tokio::test]
    async fn udp_answers_over_512_bytes_without_edns_are_truncated() {
        let srv = DnsServer::start(cfg(vec![]), table("10.99.0.1")).await.unwrap();
        let m = ask(srv.local_addr(), "many.", RecordType::A, Via::Udp { edns: false }).await;
        assert!(m.metadata.truncation, "60 A records do not fit 512 bytes");
        assert!(m.answers.len() < 60);
        let m = ask(srv.local_addr(), "many.", RecordType::A, Via::Udp { edns: true }).await;
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 60);
        let m = ask(srv.local_addr(), "many.", RecordType::A, Via::Tcp).await;
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 60);
    }

    /// A loopback upstream: `ok.example.test` A 192.0.2.10, `fail.example.test`
    /// SERVFAIL, `big.example.test` 80 A records but only over TCP (UDP answers are
    /// empty and truncated), anything else NXDOMAIN. Counts queries per transport.
    struct Upstream {
        addr: SocketAddr,
        udp_queries: Arc<AtomicU64>,
        tcp_queries: Arc<AtomicU64>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Upstream {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn upstream_answer(query: &Message, tcp: bool) -> Message {
        let mut m = Message::response(query.metadata.id, OpCode::Query);
        m.metadata.recursion_available = true;
        m.metadata.recursion_desired = query.metadata.recursion_desired;
        m.add_queries(query.queries.clone());
        let q = &query.queries[0];
        let name = q.name.to_ascii().to_ascii_lowercase();
        match name.as_str() {
            "ok.example.test." => {
                m.add_answer(Record::from_rdata(q.name.clone(), 60, RData::A(A(ip("192.0.2.10")))));
            }
            "fail.example.test." => m.metadata.response_code = ResponseCode::ServFail,
            "big.example.test." if tcp => {
                for i in 0..80u8 {
                    m.add_answer(Record::from_rdata(
                        q.name.clone(),
                        60,
                        RData::A(A(Ipv4Addr::new(192, 0, 2, i))),
                    ));
                }
            }
            "big.example.test." => m.metadata.truncation = true,
            _ => m.metadata.response_code = ResponseCode::NXDomain,
        }
        m
    }

    async fn upstream() -> Upstream {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        let tcp = TcpListener::bind(addr).await.unwrap();
        let (udp_queries, tcp_queries) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (uq, tq) = (udp_queries.clone(), tcp_queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                tokio::select! {
                    r = udp.recv_from(&mut buf) => {
                        let (n, peer) = r.unwrap();
                        uq.fetch_add(1, Ordering::SeqCst);
                        let q = Message::from_vec(&buf[..n]).unwrap();
                        udp.send_to(&upstream_answer(&q, false).to_vec().unwrap(), peer).await.unwrap();
                    }
                    r = tcp.accept() => {
                        let (mut s, _) = r.unwrap();
                        tq.fetch_add(1, Ordering::SeqCst);
                        let mut len = [0u8; 2];
                        s.read_exact(&mut len).await.unwrap();
                        let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                        s.read_exact(&mut q).await.unwrap();
                        let a = upstream_answer(&Message::from_vec(&q).unwrap(), true).to_vec().unwrap();
                        s.write_all(&(a.len() as u16).to_be_bytes()).await.unwrap();
                        s.write_all(&a).await.unwrap();
                    }
                }
            }
        });
        Upstream {
            addr,
            udp_queries,
            tcp_queries,
            task,
        }
    }

    #[tokio::test]
    async fn other_names_are_forwarded_with_the_upstream_code() {
        let up = upstream().await;
        let metrics = DnsMetrics::unregistered();
        let srv = DnsServer::start_with_metrics(cfg(vec![up.addr]), table("10.99.0.1"), metrics.clone())
            .await
            .unwrap();
        let addr = srv.local_addr();

        let m = ask(addr, "ok.example.test.", RecordType::A, Via::Udp { edns: false }).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(a_records(&m), vec![ip("192.0.2.10")]);
        assert!(!m.metadata.authoritative);
        assert!(m.metadata.recursion_available);

        let m = ask(addr, "missing.example.test.", RecordType::A, Via::Tcp).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        let m = ask(addr, "fail.example.test.", RecordType::A, Via::Udp { edns: true }).await;
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        // A name under a search domain that is no service is not ours either.
        let m = ask(addr, "nosuch.warren.", RecordType::A, Via::Udp { edns: true }).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

        assert_eq!(metrics.queries("forwarded"), 2);
        assert_eq!(metrics.queries("nxdomain"), 2);
        assert_eq!(metrics.queries("local"), 0);
        assert_eq!(up.tcp_queries.load(Ordering::SeqCst), 0, "small answers come over udp");
    }

    #[tokio::test]
    async fn truncated_upstream_answers_are_fetched_over_tcp() {
        let up = upstream().await;
        let srv = DnsServer::start(cfg(vec![up.addr]), table("10.99.0.1")).await.unwrap();
        let m = ask(srv.local_addr(), "big.example.test.", RecordType::A, Via::Tcp).await;
        assert_eq!(m.answers.len(), 80);
        assert_eq!(up.udp_queries.load(Ordering::SeqCst), 1);
        assert_eq!(up.tcp_queries.load(Ordering::SeqCst), 1);
        // The same answer to a UDP client without EDNS: truncated again, for 512 bytes.
        let m = ask(
            srv.local_addr(),
            "big.example.test.",
            RecordType::A,
            Via::Udp { edns: false },
        )
        .await;
        assert!(m.metadata.truncation);
        assert!(m.answers.len() < 80);
    }

    #[tokio::test]
    async fn a_silent_upstream_is_skipped_and_none_means_servfail() {
        // Bound but never read: queries to it time out.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let up = upstream().await;
        let metrics = DnsMetrics::unregistered();
        let srv = DnsServer::start_with_metrics(
            cfg(vec![silent.local_addr().unwrap(), up.addr]),
            table("10.99.0.1"),
            metrics.clone(),
        )
        .await
        .unwrap();
        let m = ask(
            srv.local_addr(),
            "ok.example.test.",
            RecordType::A,
            Via::Udp { edns: true },
        )
        .await;
        assert_eq!(a_records(&m), vec![ip("192.0.2.10")]);
        srv.shutdown().await.unwrap();

        let srv = DnsServer::start_with_metrics(
            cfg(vec![silent.local_addr().unwrap()]),
            table("10.99.0.1"),
            metrics.clone(),
        )
        .await
        .unwrap();
        let m = ask(
            srv.local_addr(),
            "ok.example.test.",
            RecordType::A,
            Via::Udp { edns: true },
        )
        .await;
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(metrics.queries("error"), 1);
        assert_eq!(metrics.queries("forwarded"), 1);
    }

    #[tokio::test]
    async fn counter_is_exported_as_warren_dns_queries_total() {
        let registry = Registry::new_custom(Some("warren".into()), None).unwrap();
        let metrics = DnsMetrics::register(&registry).unwrap();
        let srv = DnsServer::start_with_metrics(cfg(vec![]), table("10.99.0.1"), metrics.clone())
            .await
            .unwrap();
        ask(srv.local_addr(), "web.", RecordType::A, Via::Udp { edns: false }).await;
        let families = registry.gather();
        let family = families
            .iter()
            .find(|f| f.name() == "warren_dns_queries_total")
            .expect("warren_dns_queries_total is registered");
        let local = family
            .get_metric()
            .iter()
            .find(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == "result" && l.value() == "local")
            })
            .expect("result=\"local\" is exported");
        assert_eq!(local.get_counter().get_value(), 1.0);
        assert_eq!(
            family.get_metric().len(),
            4,
            "all four results are exported from the start"
        );
        assert!(DnsMetrics::register(&registry).is_err(), "a second registration fails");
    }

    #[tokio::test]
    async fn bind_failures_name_the_address_and_the_cause() {
        let mut c = cfg(vec![]);
        // TEST-NET-1 is on no interface here.
        c.bind = "192.0.2.1:5353".parse().unwrap();
        let err = DnsServer::start(c, DnsTable::default()).await.unwrap_err();
        assert!(
            err.to_string().starts_with("dns: cannot bind udp 192.0.2.1:5353: "),
            "{err}"
        );
        assert!(
            matches!(err, DnsError::BindUdp { ref source, .. } if source.kind() == std::io::ErrorKind::AddrNotAvailable)
        );

        // TCP taken, UDP free on the same port.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = cfg(vec![]);
        c.bind = taken.local_addr().unwrap();
        let err = DnsServer::start(c, DnsTable::default()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "dns: cannot bind tcp {}: Address already in use (os error 98)",
                taken.local_addr().unwrap()
            )
        );
    }

    #[tokio::test]
    async fn malformed_queries_get_formerr_and_unsupported_opcodes_notimp() {
        let srv = DnsServer::start(cfg(vec![]), table("10.99.0.1")).await.unwrap();
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.connect(srv.local_addr()).await.unwrap();
        let mut buf = vec![0u8; 4096];

        // Two questions in one query.
        let mut msg = Message::query();
        msg.add_query(Query::query(Name::from_ascii("web.").unwrap(), RecordType::A));
        msg.add_query(Query::query(Name::from_ascii("db.").unwrap(), RecordType::A));
        s.send(&msg.to_vec().unwrap()).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), s.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            Message::from_vec(&buf[..n]).unwrap().metadata.response_code,
            ResponseCode::FormErr
        );

        let mut msg = Message::query();
        msg.metadata.op_code = OpCode::Status;
        msg.add_query(Query::query(Name::from_ascii("web.").unwrap(), RecordType::A));
        s.send(&msg.to_vec().unwrap()).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), s.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            Message::from_vec(&buf[..n]).unwrap().metadata.response_code,
            ResponseCode::NotImp
        );
    }
}
