//! A thin typed layer over containerd's gRPC services as Warren uses them: requests
//! carrying the namespace (and lease), leases, content-store reads and streaming
//! writes, and snapshot calls. No image or container logic.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use containerd_client::services::v1::snapshots::{
    snapshots_client::SnapshotsClient, CommitSnapshotRequest, MountsRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    containers_client::ContainersClient, content_client::ContentClient, diff_client::DiffClient,
    events_client::EventsClient, images_client::ImagesClient, leases_client::LeasesClient, tasks_client::TasksClient,
    AbortRequest, CreateRequest, DeleteRequest, Info, InfoRequest, ReadContentRequest, UpdateRequest, WriteAction,
    WriteContentRequest, WriteContentResponse,
};
use containerd_client::types::Mount;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Streaming};

use super::error::{Result, RuntimeError};

const NAMESPACE_HEADER: &str = "containerd-namespace";
const LEASE_HEADER: &str = "containerd-lease";
/// Chunk size of content writes (containerd's own client uses 1 MiB).
/// How long containerd gets to accept a connection and to answer its version.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why no containerd answered on a socket.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    #[error("no socket at {}", .0.display())]
    NoSocket(PathBuf),
    #[error("{} did not accept a connection", .0.display())]
    NoAccept(PathBuf),
    #[error("{}: {reason}", socket.display())]
    Connect { socket: PathBuf, reason: String },
    #[error("{} did not answer", .0.display())]
    Silent(PathBuf),
    #[error("{}: {}", socket.display(), status.message())]
    Refused { socket: PathBuf, status: tonic::Status },
}

/// Connects to a socket and checks that containerd answers.
pub(crate) async fn probe(socket: &Path) -> std::result::Result<Channel, ProbeError> {
    let path = || socket.to_path_buf();
    if !socket.exists() {
        return Err(ProbeError::NoSocket(path()));
    }
    let channel = match tokio::time::timeout(PROBE_TIMEOUT, containerd_client::connect(socket)).await {
        Err(_) => return Err(ProbeError::NoAccept(path())),
        Ok(Err(e)) => {
            return Err(ProbeError::Connect {
                socket: path(),
                reason: super::registry::error_chain(&e),
            })
        }
        Ok(Ok(c)) => c,
    };
    let mut v = containerd_client::services::v1::version_client::VersionClient::new(channel.clone());
    match tokio::time::timeout(PROBE_TIMEOUT, v.version(())).await {
        Err(_) => Err(ProbeError::Silent(path())),
        Ok(Err(status)) => Err(ProbeError::Refused { socket: path(), status }),
        Ok(Ok(_)) => Ok(channel),
    }
}

pub(crate) const WRITE_CHUNK: usize = 1 << 20;
/// How long to wait for another client that holds the ingest lock of the same blob.
const LOCKED_RETRY_FOR: Duration = Duration::from_secs(300);

/// Connection to one containerd, scoped to one namespace.
#[derive(Clone)]
pub(crate) struct Cd {
    pub channel: Channel,
    pub namespace: String,
    pub snapshotter: String,
}

impl Cd {
    pub fn req<T>(&self, msg: T) -> Request<T> {
        self.req_in(msg, None)
    }

    pub fn req_in<T>(&self, msg: T, lease: Option<&str>) -> Request<T> {
        let mut r = Request::new(msg);
        let md = r.metadata_mut();
        if let Ok(v) = self.namespace.parse() {
            md.insert(NAMESPACE_HEADER, v);
        }
        if let Some(l) = lease.and_then(|l| l.parse().ok()) {
            md.insert(LEASE_HEADER, l);
        }
        r
    }

    pub fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }
    pub fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }
    pub fn diff(&self) -> DiffClient<Channel> {
        DiffClient::new(self.channel.clone())
    }
    pub fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }
    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }
    pub fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }
    pub fn events(&self) -> EventsClient<Channel> {
        EventsClient::new(self.channel.clone())
    }

    /// Creates a lease that keeps everything written under it from the garbage
    /// collector until deleted (or until it expires, should we crash).
    pub async fn lease_create(&self, expire: Duration) -> Result<String> {
        let id = format!("warren-{}", unique());
        let mut labels = HashMap::new();
        labels.insert(
            "containerd.io/gc.expire".to_string(),
            rfc3339(SystemTime::now() + expire),
        );
        LeasesClient::new(self.channel.clone())
            .create(self.req(CreateRequest { id: id.clone(), labels }))
            .await
            .map_err(|s| RuntimeError::grpc("create lease", &id, s))?;
        Ok(id)
    }

    pub async fn lease_delete(&self, id: &str) {
        if let Err(s) = LeasesClient::new(self.channel.clone())
            .delete(self.req(DeleteRequest {
                id: id.to_string(),
                sync: false,
            }))
            .await
        {
            tracing::warn!(lease = id, error = %s.message(), "delete lease");
        }
    }

    pub async fn content_info(&self, digest: &str) -> Result<Option<Info>> {
        match self
            .content()
            .info(self.req(InfoRequest {
                digest: digest.to_string(),
            }))
            .await
        {
            Ok(r) => Ok(r.into_inner().info),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(RuntimeError::grpc("content info", digest, s)),
        }
    }

    /// Reads a whole blob (manifests, configs: small documents).
    pub async fn content_read(&self, digest: &str) -> Result<Vec<u8>> {
        let mut stream = self
            .content()
            .read(self.req(ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            }))
            .await
            .map_err(|s| RuntimeError::grpc("read content", digest, s))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|s| RuntimeError::grpc("read content", digest, s))?
        {
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }

    /// Sets (merges) labels on a blob.
    pub async fn content_label(&self, digest: &str, labels: &BTreeMap<String, String>) -> Result<()> {
        if labels.is_empty() {
            return Ok(());
        }
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        self.content()
            .update(self.req(UpdateRequest {
                info: Some(Info {
                    digest: digest.to_string(),
                    labels: labels.clone().into_iter().collect(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths }),
            }))
            .await
            .map_err(|s| RuntimeError::grpc("label content", digest, s))?;
        Ok(())
    }

    pub async fn snapshot_exists(&self, key: &str) -> Result<bool> {
        match self
            .snapshots()
            .stat(self.req(StatSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(RuntimeError::grpc("stat snapshot", key, s)),
        }
    }

    pub async fn snapshot_prepare(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
        lease: Option<&str>,
    ) -> std::result::Result<Vec<Mount>, tonic::Status> {
        Ok(self
            .snapshots()
            .prepare(self.req_in(
                PrepareSnapshotRequest {
                    snapshotter: self.snapshotter.clone(),
                    key: key.to_string(),
                    parent: parent.to_string(),
                    labels,
                },
                lease,
            ))
            .await?
            .into_inner()
            .mounts)
    }

    pub async fn snapshot_commit(
        &self,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
        lease: Option<&str>,
    ) -> std::result::Result<(), tonic::Status> {
        self.snapshots()
            .commit(self.req_in(
                CommitSnapshotRequest {
                    snapshotter: self.snapshotter.clone(),
                    name: name.to_string(),
                    key: key.to_string(),
                    labels,
                },
                lease,
            ))
            .await?;
        Ok(())
    }

    pub async fn snapshot_mounts(&self, key: &str) -> Result<Vec<Mount>> {
        Ok(self
            .snapshots()
            .mounts(self.req(MountsRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_string(),
            }))
            .await
            .map_err(|s| RuntimeError::grpc("snapshot mounts", key, s))?
            .into_inner()
            .mounts)
    }

    /// Removes a snapshot; a missing one is fine.
    pub async fn snapshot_remove(&self, key: &str) -> Result<()> {
        match self
            .snapshots()
            .remove(self.req(RemoveSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(RuntimeError::grpc("remove snapshot", key, s)),
        }
    }
}

/// The outcome of opening a content writer.
pub(crate) enum Opened {
    Writer(Box<Writer>),
    /// The blob is already in the store.
    Exists,
}

/// One content-store ingest (`Content.Write` stream), written sequentially.
pub(crate) struct Writer {
    tx: mpsc::Sender<WriteContentRequest>,
    rx: Streaming<WriteContentResponse>,
    reference: String,
    digest: String,
    total: i64,
    offset: i64,
    /// The store got the blob from someone else (a concurrent pull of the same
    /// layer committed it) while this ingest was open: the rest is not sent.
    exists: bool,
}

/// How a commit ended: this writer stored the blob, or the store already had it
/// (committed meanwhile by a concurrent pull), without this writer's labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Committed {
    Written,
    Existed,
}

impl Writer {
    /// Opens an ingest named `reference` for the blob `digest` of `total` bytes.
    pub async fn open(cd: &Cd, lease: &str, reference: &str, digest: &str, total: i64) -> Result<Opened> {
        let deadline = tokio::time::Instant::now() + LOCKED_RETRY_FOR;
        loop {
            if cd.content_info(digest).await?.is_some() {
                return Ok(Opened::Exists);
            }
            let (tx, rx) = mpsc::channel(4);
            let stat = WriteContentRequest {
                action: WriteAction::Stat as i32,
                r#ref: reference.to_string(),
                total,
                expected: digest.to_string(),
                ..Default::default()
            };
            tx.send(stat).await.expect("receiver alive");
            let mut client = cd.content();
            let result = async {
                let mut stream = client
                    .write(cd.req_in(ReceiverStream::new(rx), Some(lease)))
                    .await?
                    .into_inner();
                let first = stream
                    .message()
                    .await?
                    .ok_or_else(|| tonic::Status::unknown("content write stream closed"))?;
                Ok::<_, tonic::Status>((stream, first))
            }
            .await;
            match result {
                Ok((stream, _)) => {
                    return Ok(Opened::Writer(Box::new(Writer {
                        tx,
                        rx: stream,
                        reference: reference.to_string(),
                        digest: digest.to_string(),
                        total,
                        offset: 0,
                        exists: false,
                    })))
                }
                // Another client (a concurrent pull of the same layer) holds the ingest.
                Err(s) if s.code() == Code::Unavailable && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(reference, "content ingest locked; waiting");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(s) if s.code() == Code::AlreadyExists => return Ok(Opened::Exists),
                Err(s) => return Err(RuntimeError::grpc("write content", digest, s)),
            }
        }
    }

    async fn round_trip(
        &mut self,
        req: WriteContentRequest,
    ) -> std::result::Result<WriteContentResponse, tonic::Status> {
        if self.tx.send(req).await.is_err() {
            // The stream ended; its status says why.
            return match self.rx.message().await {
                Err(s) => Err(s),
                Ok(_) => Err(tonic::Status::unknown("content write stream closed")),
            };
        }
        self.rx
            .message()
            .await?
            .ok_or_else(|| tonic::Status::unknown("content write stream closed"))
    }

    /// Appends data. Offset 0 on the first write truncates any earlier partial ingest.
    pub async fn write(&mut self, data: Bytes) -> Result<()> {
        for chunk in data.chunks(WRITE_CHUNK) {
            if self.exists {
                return Ok(());
            }
            let req = WriteContentRequest {
                action: WriteAction::Write as i32,
                r#ref: self.reference.clone(),
                total: self.total,
                expected: self.digest.clone(),
                offset: self.offset,
                data: chunk.to_vec(),
                ..Default::default()
            };
            match self.round_trip(req).await {
                Ok(_) => self.offset += chunk.len() as i64,
                // containerd 1.6 answers a write to an ingest whose digest another
                // client has just committed with "blob with expected digest ...
                // exists": the blob is there, which is all this writer wanted.
                Err(s) if s.code() == Code::AlreadyExists => self.exists = true,
                Err(s) => return Err(RuntimeError::grpc("write content", &self.digest, s)),
            }
        }
        Ok(())
    }

    /// Commits with labels; the store verifies size and digest.
    pub async fn commit(mut self, labels: &BTreeMap<String, String>) -> Result<Committed> {
        if self.exists {
            return Ok(Committed::Existed);
        }
        let req = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: self.reference.clone(),
            total: self.total,
            expected: self.digest.clone(),
            offset: self.offset,
            labels: labels.clone().into_iter().collect(),
            ..Default::default()
        };
        match self.round_trip(req).await {
            Ok(_) => Ok(Committed::Written),
            Err(s) if s.code() == Code::AlreadyExists => Ok(Committed::Existed),
            Err(s) => Err(RuntimeError::grpc("commit content", &self.digest, s)),
        }
    }

    /// Drops a failed ingest so that the next attempt starts clean.
    pub async fn abort(self, cd: &Cd) {
        drop(self.tx);
        let _ = cd
            .content()
            .abort(cd.req(AbortRequest {
                r#ref: self.reference.clone(),
            }))
            .await;
    }
}

/// A short random string for ids and keys.
pub(crate) fn unique() -> String {
    let n: u64 = rand::random();
    format!("{:x}-{:012x}", std::process::id(), n & 0xffff_ffff_ffff)
}

/// RFC 3339 UTC timestamp, as containerd's `gc.expire` label wants.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A protobuf timestamp as `SystemTime`.
pub(crate) fn system_time(ts: Option<&prost_types::Timestamp>) -> Option<SystemTime> {
    let ts = ts?;
    if ts.seconds <= 0 {
        return None;
    }
    Some(UNIX_EPOCH + Duration::new(ts.seconds as u64, ts.nanos.max(0) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }
}
