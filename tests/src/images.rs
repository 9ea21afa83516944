//! Test images built from Debian's `busybox-static` (no download, ever): an OCI image
//! layout holding `warren-test/http` (busybox httpd answering its hostname, /healthz),
//! `warren-test/echo` (TCP echo on 7) and `warren-test/crash` (exits 3 after 1 s),
//! plus a two-platform index of http, and the OCI / `docker save` archives made from
//! them. Shared by the tests and `cargo xtask image`. Not pushing (registry.rs).
//!
//! UDP echo is not provided: Debian's busybox build has neither `nc -u` nor `udpsvd`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::containerd::HarnessError;

/// Where Debian's busybox-static installs its (static) binary.
pub const BUSYBOX: &str = "/bin/busybox";

const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The test images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TestImage {
    Http,
    Echo,
    Crash,
}

impl TestImage {
    pub const ALL: [TestImage; 3] = [TestImage::Http, TestImage::Echo, TestImage::Crash];

    /// Repository name, e.g. `warren-test/http`.
    pub fn repository(self) -> &'static str {
        match self {
            TestImage::Http => "warren-test/http",
            TestImage::Echo => "warren-test/echo",
            TestImage::Crash => "warren-test/crash",
        }
    }

    /// `org.opencontainers.image.ref.name` in the layout (`oci:DIR:<this>`).
    pub fn layout_ref(self) -> &'static str {
        match self {
            TestImage::Http => "http",
            TestImage::Echo => "echo",
            TestImage::Crash => "crash",
        }
    }
}

/// Layout ref of the two-platform index (linux/amd64 = http, linux/arm64 = a manifest
/// with the same layers and an arm64 config).
pub const HTTP_MULTI_REF: &str = "http-multi";

/// A descriptor as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Blob {
    fn json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// What [`build_layout`] wrote.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
    /// Manifest of each image (linux/amd64).
    pub manifests: BTreeMap<TestImage, Blob>,
    /// The two-platform index and its amd64 and arm64 manifests.
    pub http_multi: Blob,
    pub http_arm64_manifest: Blob,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let context = context.into();
    move |source| HarnessError::Io { context, source }
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn write_blob(dir: &Path, media_type: &str, data: &[u8]) -> Result<Blob, HarnessError> {
    let d = digest(data);
    let path = dir.join("blobs/sha256").join(d.trim_start_matches("sha256:"));
    std::fs::write(&path, data).map_err(io(format!("write {}", path.display())))?;
    Ok(Blob {
        media_type: media_type.to_string(),
        digest: d,
        size: data.len() as u64,
    })
}

/// Checks that Debian's static busybox is installed.
pub fn busybox() -> Result<PathBuf, HarnessError> {
    let p = PathBuf::from(BUSYBOX);
    let meta = std::fs::read(&p).map_err(|_| HarnessError::MissingBinary {
        binary: BUSYBOX.into(),
        package: "busybox-static",
    })?;
    // A dynamically linked busybox (package `busybox`) would not run in a bare rootfs.
    if has_interpreter(&meta) {
        return Err(HarnessError::MissingBinary {
            binary: format!("{BUSYBOX} (statically linked)"),
            package: "busybox-static",
        });
    }
    Ok(p)
}

/// Whether a 64-bit little-endian ELF file names a program interpreter (PT_INTERP),
/// i.e. is dynamically linked.
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
    };
    if elf.get(..4) != Some(b"\x7fELF") {
        return true;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return true;
    };
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        elf.get(o..o + 4) == Some(&3u32.to_le_bytes()[..])
    })
}

/// A deterministic tar (mtime 0, root-owned unless said otherwise).
struct Tar {
    b: tar::Builder<Vec<u8>>,
}

impl Tar {
    fn new() -> Tar {
        Tar {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64, uid: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(0);
        h.set_uid(uid);
        h.set_gid(uid);
        h
    }

    fn dir(&mut self, path: &str, mode: u32, uid: u64) -> std::io::Result<()> {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0, uid);
        self.b
            .append_data(&mut h, format!("{}/", path.trim_end_matches('/')), std::io::empty())
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> std::io::Result<()> {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64, 0);
        self.b.append_data(&mut h, path, data)
    }

    fn symlink(&mut self, path: &str, target: &str) -> std::io::Result<()> {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0, 0);
        self.b.append_link(&mut h, path, target)
    }

    fn finish(self) -> std::io::Result<Vec<u8>> {
        self.b.into_inner()
    }
}

fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data)?;
    e.finish()
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
warren:x:1000:1000:warren test user:/home/warren:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nwarren:x:1000:\nextra:x:2000:warren\nnogroup:x:65534:\n";

/// The base layer: busybox with every applet linked, /etc basics, standard dirs.
fn base_layer(busybox: &Path) -> Result<Vec<u8>, HarnessError> {
    let bin = std::fs::read(busybox).map_err(io(format!("read {}", busybox.display())))?;
    let out = std::process::Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(io(format!("run {} --list-full", busybox.display())))?;
    let applets = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut t = Tar::new();
    let f = |e| HarnessError::Io {
        context: "build base layer".into(),
        source: e,
    };
    for (d, mode, uid) in [
        ("bin", 0o755, 0),
        ("sbin", 0o755, 0),
        ("usr", 0o755, 0),
        ("usr/bin", 0o755, 0),
        ("usr/sbin", 0o755, 0),
        ("usr/local", 0o755, 0),
        ("usr/local/bin", 0o755, 0),
        ("etc", 0o755, 0),
        ("dev", 0o755, 0),
        ("proc", 0o555, 0),
        ("sys", 0o555, 0),
        ("run", 0o755, 0),
        ("var", 0o755, 0),
        ("root", 0o700, 0),
        ("home", 0o755, 0),
        ("home/warren", 0o755, 1000),
    ] {
        t.dir(d, mode, uid).map_err(f)?;
    }
    t.dir("tmp", 0o1777, 0).map_err(f)?;
    t.file("bin/busybox", 0o755, &bin).map_err(f)?;
    for a in applets
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "bin/busybox")
    {
        t.symlink(a, "/bin/busybox").map_err(f)?;
    }
    t.file("etc/passwd", 0o644, PASSWD.as_bytes()).map_err(f)?;
    t.file("etc/group", 0o644, GROUP.as_bytes()).map_err(f)?;
    t.file("etc/hosts", 0o644, b"127.0.0.1 localhost\n").map_err(f)?;
    t.file("etc/resolv.conf", 0o644, b"").map_err(f)?;
    t.finish().map_err(f)
}

const HTTP_MAIN: &str = "#!/bin/sh\n\
echo \"warren-test/http: serving $(hostname) on port ${PORT:-80}\"\n\
exec httpd -f -v -p \"${PORT:-80}\" -h /www\n";
const HTTP_INDEX: &str = "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\nhostname\n";
/// A long request: answers after 3 s (drain tests).
const HTTP_SLOW: &str = "#!/bin/sh\nsleep 3\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\nhostname\n";
const ECHO_MAIN: &str = "#!/bin/sh\n\
echo \"warren-test/echo: tcp echo on port 7, udp hostname on port 7\"\n\
/usr/local/bin/udp-name 7 &\n\
exec nc -ll -p 7 -e /bin/cat\n";

/// A UDP responder for the echo image (Debian's busybox has no UDP server applet):
/// answers every datagram with `<hostname>@<sender address>`.
const UDP_NAME_C: &str = r#"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 7;
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0) { perror("udp-name"); return 1; }
    char host[256] = {0}, buf[2048], out[512];
    gethostname(host, sizeof host - 1);
    for (;;) {
        struct sockaddr_in from;
        socklen_t len = sizeof from;
        if (recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &len) < 0) continue;
        int n = snprintf(out, sizeof out, "%s@%s\n", host, inet_ntoa(from.sin_addr));
        sendto(s, out, n, 0, (struct sockaddr *)&from, len);
    }
}
"#;

/// Compiles the UDP responder statically (gcc and libc6-dev, no download).
fn udp_name_binary() -> Result<Vec<u8>, HarnessError> {
    let gcc = crate::containerd::require("gcc", "gcc")?;
    let dir = tempfile::tempdir().map_err(io("temp dir for udp-name".to_string()))?;
    let src = dir.path().join("udp-name.c");
    let bin = dir.path().join("udp-name");
    std::fs::write(&src, UDP_NAME_C).map_err(io("write udp-name.c".to_string()))?;
    let out = std::process::Command::new(&gcc)
        .args(["-static", "-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .map_err(io("run gcc".to_string()))?;
    if !out.status.success() {
        return Err(HarnessError::Command {
            command: format!("gcc -static {} (needs Debian's libc6-dev)", src.display()),
            status: out.status.to_string(),
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    std::fs::read(&bin).map_err(io("read udp-name".to_string()))
}
const CRASH_MAIN: &str = "#!/bin/sh\n\
echo \"warren-test/crash: exiting with 3 in 1s\"\n\
sleep 1\n\
exit 3\n";

fn app_layer(image: TestImage) -> Result<Vec<u8>, HarnessError> {
    let mut t = Tar::new();
    let f = |e| HarnessError::Io {
        context: format!("build layer of {}", image.repository()),
        source: e,
    };
    match image {
        TestImage::Http => {
            t.dir("www", 0o755, 0).map_err(f)?;
            t.dir("www/cgi-bin", 0o755, 0).map_err(f)?;
            t.file("www/cgi-bin/index.cgi", 0o755, HTTP_INDEX.as_bytes())
                .map_err(f)?;
            t.file("www/cgi-bin/slow", 0o755, HTTP_SLOW.as_bytes()).map_err(f)?;
            t.file("www/healthz", 0o644, b"ok\n").map_err(f)?;
            t.file("usr/local/bin/warren-http", 0o755, HTTP_MAIN.as_bytes())
                .map_err(f)?;
        }
        TestImage::Echo => {
            t.file("usr/local/bin/warren-echo", 0o755, ECHO_MAIN.as_bytes())
                .map_err(f)?;
            t.file("usr/local/bin/udp-name", 0o755, &udp_name_binary()?)
                .map_err(f)?;
        }
        TestImage::Crash => {
            t.file("usr/local/bin/warren-crash", 0o755, CRASH_MAIN.as_bytes())
                .map_err(f)?;
        }
    }
    t.finish().map_err(f)
}

const PATH_ENV: &str = "PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin";

fn image_config(image: TestImage, arch: &str, diff_ids: &[String]) -> Value {
    let mut config = match image {
        TestImage::Http => json!({
            "Entrypoint": ["/usr/local/bin/warren-http"],
            "Env": [PATH_ENV, "PORT=80"],
            "WorkingDir": "/www",
            "ExposedPorts": {"80/tcp": {}},
            "StopSignal": "SIGTERM",
            "Healthcheck": {
                "Test": ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1/healthz"],
                "Interval": 2_000_000_000u64,
                "Timeout": 2_000_000_000u64,
                "Retries": 3
            }
        }),
        TestImage::Echo => json!({
            "Entrypoint": ["/usr/local/bin/warren-echo"],
            "Env": [PATH_ENV],
            "ExposedPorts": {"7/tcp": {}}
        }),
        TestImage::Crash => json!({
            "Entrypoint": ["/usr/local/bin/warren-crash"],
            "Env": [PATH_ENV]
        }),
    };
    config["Labels"] = json!({"org.opencontainers.image.title": image.repository()});
    json!({
        "created": "1970-01-01T00:00:00Z",
        "architecture": arch,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "warren-tests images.rs"}]
    })
}

fn manifest(config: &Blob, layers: &[Blob]) -> Value {
    json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config.json(),
        "layers": layers.iter().map(Blob::json).collect::<Vec<_>>()
    })
}

/// Writes an OCI image layout with the three images and the two-platform index of
/// http into `dir` (created if missing; an existing layout there is replaced).
pub fn build_layout(dir: &Path) -> Result<Layout, HarnessError> {
    let busybox = busybox()?;
    let blobs = dir.join("blobs/sha256");
    let _ = std::fs::remove_dir_all(&blobs);
    std::fs::create_dir_all(&blobs).map_err(io(format!("create {}", blobs.display())))?;
    let base_tar = base_layer(&busybox)?;
    let base_diff = digest(&base_tar);
    let gz = |data: &[u8]| gzip(data).map_err(io("gzip layer"));
    let base = write_blob(dir, MEDIA_LAYER, &gz(&base_tar)?)?;
    let mut manifests = BTreeMap::new();
    let mut entries = vec![];
    let mut http_parts = None;
    for image in TestImage::ALL {
        let app_tar = app_layer(image)?;
        let diff_ids = vec![base_diff.clone(), digest(&app_tar)];
        let app = write_blob(dir, MEDIA_LAYER, &gz(&app_tar)?)?;
        let layers = vec![base.clone(), app];
        let config = image_config(image, "amd64", &diff_ids);
        let config = write_blob(dir, MEDIA_CONFIG, &serde_json::to_vec(&config).expect("json"))?;
        let m = write_blob(
            dir,
            MEDIA_MANIFEST,
            &serde_json::to_vec(&manifest(&config, &layers)).expect("json"),
        )?;
        let mut e = m.json();
        e["annotations"] = json!({ REF_NAME: image.layout_ref() });
        e["platform"] = json!({"os": "linux", "architecture": "amd64"});
        entries.push(e);
        if image == TestImage::Http {
            http_parts = Some((diff_ids, layers));
        }
        manifests.insert(image, m);
    }
    let (diff_ids, layers) = http_parts.expect("http built");
    let arm_config = image_config(TestImage::Http, "arm64", &diff_ids);
    let arm_config = write_blob(dir, MEDIA_CONFIG, &serde_json::to_vec(&arm_config).expect("json"))?;
    let arm = write_blob(
        dir,
        MEDIA_MANIFEST,
        &serde_json::to_vec(&manifest(&arm_config, &layers)).expect("json"),
    )?;
    let amd = &manifests[&TestImage::Http];
    let mut amd_entry = amd.json();
    amd_entry["platform"] = json!({"os": "linux", "architecture": "amd64"});
    let mut arm_entry = arm.json();
    arm_entry["platform"] = json!({"os": "linux", "architecture": "arm64", "variant": "v8"});
    // The foreign platform first, so that picking the first entry would be wrong.
    let index = json!({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [arm_entry, amd_entry]});
    let multi = write_blob(dir, MEDIA_INDEX, &serde_json::to_vec(&index).expect("json"))?;
    let mut e = multi.json();
    e["annotations"] = json!({ REF_NAME: HTTP_MULTI_REF });
    entries.push(e);
    let top = json!({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": entries});
    std::fs::write(dir.join("index.json"), serde_json::to_vec_pretty(&top).expect("json"))
        .map_err(io("write index.json"))?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io("write oci-layout"))?;
    Ok(Layout {
        dir: dir.to_path_buf(),
        manifests,
        http_multi: multi,
        http_arm64_manifest: arm,
    })
}

fn read_blob(layout: &Layout, digest: &str) -> Result<Vec<u8>, HarnessError> {
    let p = layout
        .dir
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    std::fs::read(&p).map_err(io(format!("read {}", p.display())))
}

fn tar_file(t: &mut tar::Builder<std::fs::File>, name: &str, data: &[u8]) -> std::io::Result<()> {
    let mut h = Tar::header(tar::EntryType::Regular, 0o644, data.len() as u64, 0);
    t.append_data(&mut h, name, data)
}

/// Writes an OCI archive (a tar of a layout) holding one image, named `name` by the
/// `io.containerd.image.name` annotation (ref.name carries the tag, as Docker writes).
pub fn oci_archive(layout: &Layout, image: TestImage, name: &str, out: &Path) -> Result<(), HarnessError> {
    let m = &layout.manifests[&image];
    let manifest: Value = serde_json::from_slice(&read_blob(layout, &m.digest)?).map_err(|e| HarnessError::Io {
        context: "parse manifest".into(),
        source: std::io::Error::other(e),
    })?;
    let mut digests = vec![
        m.digest.clone(),
        manifest["config"]["digest"].as_str().unwrap_or("").to_string(),
    ];
    for l in manifest["layers"].as_array().into_iter().flatten() {
        digests.push(l["digest"].as_str().unwrap_or("").to_string());
    }
    let tag = name.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
    let mut entry = m.json();
    entry["annotations"] = json!({"io.containerd.image.name": name, REF_NAME: tag});
    let index = json!({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [entry]});
    let f = std::fs::File::create(out).map_err(io(format!("create {}", out.display())))?;
    let mut t = tar::Builder::new(f);
    let w = |e| HarnessError::Io {
        context: format!("write {}", out.display()),
        source: e,
    };
    tar_file(&mut t, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(w)?;
    tar_file(&mut t, "index.json", &serde_json::to_vec(&index).expect("json")).map_err(w)?;
    for d in digests {
        let data = read_blob(layout, &d)?;
        tar_file(
            &mut t,
            &format!("blobs/sha256/{}", d.trim_start_matches("sha256:")),
            &data,
        )
        .map_err(w)?;
    }
    t.finish().map_err(w)
}

/// Writes a `docker save` archive (legacy format: manifest.json, `<id>.json`,
/// uncompressed `<layer>/layer.tar`) of one image tagged `name`.
pub fn docker_archive(layout: &Layout, image: TestImage, name: &str, out: &Path) -> Result<(), HarnessError> {
    let m = &layout.manifests[&image];
    let manifest: Value = serde_json::from_slice(&read_blob(layout, &m.digest)?).map_err(|e| HarnessError::Io {
        context: "parse manifest".into(),
        source: std::io::Error::other(e),
    })?;
    let config_digest = manifest["config"]["digest"].as_str().unwrap_or("").to_string();
    let config = read_blob(layout, &config_digest)?;
    let f = std::fs::File::create(out).map_err(io(format!("create {}", out.display())))?;
    let mut t = tar::Builder::new(f);
    let w = |e| HarnessError::Io {
        context: format!("write {}", out.display()),
        source: e,
    };
    let config_name = format!("{}.json", config_digest.trim_start_matches("sha256:"));
    tar_file(&mut t, &config_name, &config).map_err(w)?;
    let mut layer_names = vec![];
    for l in manifest["layers"].as_array().into_iter().flatten() {
        let d = l["digest"].as_str().unwrap_or("");
        let gz = read_blob(layout, d)?;
        let mut raw = vec![];
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw).map_err(io("gunzip layer"))?;
        let dir = digest(&raw).trim_start_matches("sha256:").to_string();
        let name = format!("{dir}/layer.tar");
        tar_file(&mut t, &name, &raw).map_err(w)?;
        layer_names.push(name);
    }
    let mf = json!([{"Config": config_name, "RepoTags": [name], "Layers": layer_names}]);
    tar_file(&mut t, "manifest.json", &serde_json::to_vec(&mf).expect("json")).map_err(w)?;
    t.finish().map_err(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let layout = build_layout(dir.path()).expect("busybox-static must be installed");
        let index: Value = serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"].as_array().unwrap().len(), 4);
        for image in TestImage::ALL {
            let m: Value =
                serde_json::from_slice(&read_blob(&layout, &layout.manifests[&image].digest).unwrap()).unwrap();
            let cfg: Value =
                serde_json::from_slice(&read_blob(&layout, m["config"]["digest"].as_str().unwrap()).unwrap()).unwrap();
            let diff_ids = cfg["rootfs"]["diff_ids"].as_array().unwrap();
            let layers = m["layers"].as_array().unwrap();
            assert_eq!(diff_ids.len(), 2);
            for (l, d) in layers.iter().zip(diff_ids) {
                let gz = read_blob(&layout, l["digest"].as_str().unwrap()).unwrap();
                assert_eq!(gz.len() as u64, l["size"].as_u64().unwrap());
                let mut raw = vec![];
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw).unwrap();
                assert_eq!(&digest(&raw), d.as_str().unwrap());
            }
        }
        // Deterministic: a second build gives the same digests.
        let again = build_layout(dir.path()).unwrap();
        assert_eq!(again.manifests, layout.manifests);
    }
}
