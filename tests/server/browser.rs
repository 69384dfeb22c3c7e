//! The web page in a real browser: headless Chromium driven through WebDriver (chromedriver,
//! named by `CHROMEDRIVER`; `scripts/install-chromium.sh` installs Debian's packages and
//! `scripts/test` runs these tests). Screenshots go to `target/test-artifacts/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::blocking::Client;
use serde_json::{Value, json};

use crate::harness::{Server, client_builder, data_dir, fixture, trace_id_of, wait_until};

/// The key WebDriver gives element references under.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process with one headless Chromium session.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: Client,
    profile_dir: PathBuf,
}

impl Browser {
    fn start(name: &str) -> Browser {
        let chromedriver = std::env::var("CHROMEDRIVER")
            .expect("CHROMEDRIVER names the chromedriver binary (scripts/install-chromium.sh)");
        let chromium =
            std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_string());
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = client_builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        wait_until("chromedriver ready", || {
            http.get(format!("{base}/status"))
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == true)
        });
        let profile_dir = data_dir(&format!("chromium-{name}"));
        std::fs::create_dir_all(&profile_dir).unwrap();
        let capabilities = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        "--disable-dev-shm-usage", "--window-size=1400,1000",
                        format!("--user-data-dir={}", profile_dir.display()),
                    ],
                },
            }},
        });
        let reply: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .unwrap()
            .json()
            .unwrap();
        let session = reply["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {reply}"))
            .to_string();
        Browser {
            driver,
            base,
            session,
            http,
            profile_dir,
        }
    }

    /// A WebDriver command; its `value`, or the WebDriver error.
    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let request = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body.unwrap_or(json!({}))),
        };
        let response = request.send().unwrap();
        let ok = response.status().is_success();
        let value = response.json::<Value>().unwrap()["value"].take();
        if ok { Ok(value) } else { Err(value) }
    }

    fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(json!({ "url": url })))
            .unwrap();
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    fn script(&self, script: &str, args: Value) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .unwrap_or_else(|e| panic!("script failed: {e}"))
    }

    /// Waits until an element matches `css`; its reference.
    fn wait_for(&self, css: &str) -> String {
        let mut found = None;
        wait_until(&format!("an element matching {css}"), || {
            found = self
                .command(
                    "POST",
                    "/element",
                    Some(json!({ "using": "css selector", "value": css })),
                )
                .ok()
                .and_then(|v| v[ELEMENT].as_str().map(str::to_string));
            found.is_some()
        });
        found.unwrap()
    }

    fn text(&self, element: &str) -> String {
        self.command("GET", &format!("/element/{element}/text"), None)
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    }

    fn click(&self, element: &str) {
        self.command("POST", &format!("/element/{element}/click"), None)
            .unwrap();
    }

    fn type_into(&self, element: &str, text: &str) {
        self.command(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .unwrap();
    }

    /// Saves a screenshot as `target/test-artifacts/NAME.png`.
    fn screenshot(&self, name: &str) {
        use base64::Engine;
        let png = self.command("GET", "/screenshot", None).unwrap();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::write(&path, bytes).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.command("DELETE", "", None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile_dir);
    }
}

/// The rendered flame graph's frames: index, width in pixels, and the root's width.
fn frame_widths(browser: &Browser) -> (f64, Vec<(usize, f64, String)>) {
    let value = browser.script(
        "const graph = document.getElementById('flame');
         const frames = [...graph.querySelectorAll('.frame:not(.ancestor)')].map(f =>
             [Number(f.dataset.index), f.getBoundingClientRect().width, f.dataset.name]);
         const root = graph.querySelector('.frame[data-index=\"0\"]').getBoundingClientRect().width;
         return [root, frames];",
        json!([]),
    );
    let root = value[0].as_f64().unwrap();
    let frames = value[1]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f[0].as_u64().unwrap() as usize,
                f[1].as_f64().unwrap(),
                f[2].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (root, frames)
}

#[test]
#[ignore = "needs CHROMEDRIVER (scripts/install-chromium.sh); run by scripts/test"]
fn the_page_shows_modules_runs_and_a_run_of_fib_with_exact_figures() {
    let server = Server::start(&data_dir("browser"), &[], &[]);
    server.upload_ok("fib", &fixture("fib.wasm"));
    server.upload_ok("trap", &fixture("trap.wasm"));
    let fib12 = trace_id_of(&server.run("name=fib", "12"));
    let trap = trace_id_of(&server.run("name=trap", ""));
    let fib20 = trace_id_of(&server.run("name=fib", "20"));
    let browser = Browser::start("main");

    // Home: modules with their statistics, recent runs, and a new run appearing by itself.
    browser.goto(&format!("{}/", server.url));
    let fib_row = browser.wait_for("#modules-table tr[data-module='fib']");
    let cells: Vec<String> = browser
        .text(&fib_row)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(cells[0], "fib");
    assert!(browser.text(&fib_row).contains(" 2 0.0 %"), "{cells:?}");
    browser.wait_for(&format!("#runs-table tr[data-trace='{fib12}']"));
    let trap_row = browser.wait_for(&format!("#runs-table tr[data-trace='{trap}']"));
    assert!(browser.text(&trap_row).contains("trap: wasm `unreachable`"));
    let fib10 = trace_id_of(&server.run("name=fib", "10"));
    browser.wait_for(&format!("#runs-table tr[data-trace='{fib10}']"));
    browser.screenshot("home");

    // One run of fib(12): frame widths match the profile's totals, the table the exact counts.
    browser.goto(&format!("{}/#/run/{fib12}", server.url));
    browser.wait_for(&format!("[data-view='run'][data-ready='{fib12}']"));
    let stacks: Value = server
        .get(&format!("/traces/{fib12}?format=stacks"))
        .json()
        .unwrap();
    let totals: Vec<u64> = stacks["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["total_ns"].as_u64().unwrap())
        .collect();
    let (root_px, frames) = frame_widths(&browser);
    assert!(root_px > 500.0, "root frame {root_px} px wide");
    assert!(frames.iter().filter(|f| f.2 == "fib::fib").count() >= 8);
    for (index, width, name) in &frames {
        let expected = root_px * totals[*index] as f64 / totals[0] as f64;
        assert!(
            (width - expected).abs() <= 1.0,
            "{name}: {width} px, expected {expected} px"
        );
    }
    let calls = browser.wait_for("#functions tr[data-name='fib::fib'] td.calls");
    assert_eq!(browser.text(&calls), "465");
    // Sorting by calls puts fib::fib first; a click on a frame shows its figures.
    let by_calls = browser.wait_for("#functions th[data-key='calls']");
    browser.click(&by_calls);
    let first = browser.wait_for("#functions tbody tr:first-child");
    assert!(browser.text(&first).starts_with("fib::fib 465 "));
    let outermost = browser.script(
        "return [...document.querySelectorAll('#flame .frame[data-name=\"fib::fib\"]')]
             .sort((a, b) => a.dataset.depth - b.dataset.depth)[0].dataset.index;",
        json!([]),
    );
    let frame = browser.wait_for(&format!(
        "#flame .frame[data-index='{}']",
        outermost.as_str().unwrap()
    ));
    browser.click(&frame);
    let details = browser.wait_for("#details dl");
    let text = browser.text(&details);
    assert!(text.contains("calls\n1\n"), "{text}");
    assert!(text.contains("fib::main\nfib::fib"), "{text}");
    browser.screenshot("run-fib12");

    // A trap: the backtrace is shown; the failed spans are marked.
    browser.goto(&format!("{}/#/run/{trap}", server.url));
    browser.wait_for(&format!("[data-view='run'][data-ready='{trap}']"));
    let backtrace = browser.wait_for("#trap");
    let text = browser.text(&backtrace);
    assert!(
        text.contains("unreachable") && text.contains("trap::do_trap"),
        "{text}"
    );

    // A run at the span cap (10,000 spans, 21,891 calls of fib::fib) renders whole.
    browser.goto(&format!("{}/#/run/{fib20}", server.url));
    let view = browser.wait_for(&format!("[data-view='run'][data-ready='{fib20}']"));
    let calls = browser.wait_for("#functions tr[data-name='fib::fib'] td.calls");
    assert_eq!(browser.text(&calls), "21,891");
    let render_ms = browser.command(
        "GET",
        &format!("/element/{view}/attribute/data-render-ms"),
        None,
    );
    eprintln!(
        "10,002-span run: fetched and drawn in {} ms",
        render_ms.unwrap()
    );
    browser.screenshot("run-fib20");

    // The module's merged flame graph: its root counts the runs.
    browser.goto(&format!("{}/#/module/fib", server.url));
    browser.wait_for("[data-view='module'][data-ready='fib']");
    let root = browser.wait_for("#flame .frame[data-index='0']");
    let runs = browser.command(
        "GET",
        &format!("/element/{root}/attribute/data-calls"),
        None,
    );
    assert_eq!(runs.unwrap(), "3");
    browser.screenshot("module-fib");
}

#[test]
#[ignore = "needs CHROMEDRIVER (scripts/install-chromium.sh); run by scripts/test"]
fn with_a_read_token_the_page_shows_nothing_until_it_is_given() {
    let server = Server::start(&data_dir("browser-token"), &["--read-token", "s3cret"], &[]);
    server.upload_ok("fib", &fixture("fib.wasm"));
    let browser = Browser::start("token");
    browser.goto(&format!("{}/", server.url));
    let error = browser.wait_for("#error:not([hidden])");
    assert_eq!(browser.text(&error), "this server needs its read token");
    assert_eq!(
        browser.script(
            "return document.querySelectorAll('#modules-table').length;",
            json!([])
        ),
        0
    );
    let input = browser.wait_for("#token-form:not([hidden]) #token-input");
    browser.type_into(&input, "s3cret");
    let submit = browser.wait_for("#token-form button[type='submit']");
    browser.click(&submit);
    browser.wait_for("#modules-table tr[data-module='fib']");
}
