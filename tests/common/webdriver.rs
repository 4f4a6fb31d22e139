//! Headless Chromium driven over WebDriver: `chromedriver` on a free loopback port, spoken to
//! with plain HTTP (reqwest), a fresh profile per browser. Waits happen inside the page (an
//! async script that resolves when a condition holds) and are bounded by the script timeout.
//! Dropping a [`Browser`] ends the session and kills, by PID, the driver and every process it
//! started.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::process::{POLL, children_of, free_port, reap_or_kill, send_signal};

/// The WebDriver id of an element in the W3C protocol.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long a condition may take to hold in the page.
pub const WAIT: Duration = Duration::from_secs(15);

/// A headless Chromium with one WebDriver session.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium of `width` × `height` pixels.
    pub async fn start(width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().expect("temp dir for the browser profile");
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", profile.path().join("chromedriver.log").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver (Debian package chromium-driver)");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let mut browser = Browser { driver, port, session: String::new(), http, _profile: profile };
        browser.wait_for_driver().await;
        let user_data = browser._profile.path().join("chromium");
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", user_data.display()),
                ],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
            "timeouts": { "script": WAIT.as_millis() as u64, "pageLoad": 30_000, "implicit": 0 },
        }}});
        let created = browser.raw("POST", "/session", Some(caps)).await;
        browser.session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver made no session: {created}"))
            .to_owned();
        browser
    }

    async fn wait_for_driver(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = self
                .http
                .get(format!("http://127.0.0.1:{}/status", self.port))
                .send()
                .await
                .ok()
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                return;
            }
            if let Ok(Some(status)) = self.driver.try_wait() {
                panic!("chromedriver exited with {status}");
            }
            assert!(Instant::now() < deadline, "chromedriver did not answer within 20 s");
            tokio::time::sleep(POLL).await;
        }
    }

    async fn raw(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method.clone(), &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{method} {path} to chromedriver: {e}"));
        resp.json().await.unwrap_or(Value::Null)
    }

    /// A command of the session; panics with the driver's message when it fails.
    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let reply = self.raw(method, &format!("/session/{}{path}", self.session), body).await;
        if let Some(error) = reply["value"]["error"].as_str() {
            panic!("webdriver {method} {path}: {error}: {}", reply["value"]["message"]);
        }
        reply["value"].clone()
    }

    /// Opens `url` and waits for the document to load.
    pub async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url }))).await;
    }

    /// The element matching `css`; panics when there is none.
    pub async fn find(&self, css: &str) -> String {
        let v = self.cmd("POST", "/element", Some(json!({ "using": "css selector", "value": css }))).await;
        v[ELEMENT_KEY].as_str().unwrap_or_else(|| panic!("no element {css}: {v}")).to_owned()
    }

    /// Clicks the element matching `css` as a user would (it must be visible and enabled).
    pub async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.cmd("POST", &format!("/element/{id}/click"), Some(json!({}))).await;
    }

    /// Clicks, as a user would, the element that `script` (a function body; `arguments` holds
    /// `args`) returns — for elements a CSS selector cannot name safely, such as a row keyed by
    /// a hostile account name. The page re-renders its tables on every refresh, so an element
    /// that went stale between finding and clicking is looked up again, a bounded few times.
    pub async fn click_found(&self, what: &str, script: &str, args: Value) {
        for _ in 0..5 {
            let found = self.execute(script, args.clone()).await;
            let id = found[ELEMENT_KEY].as_str().unwrap_or_else(|| panic!("no element for {what}: {found}")).to_owned();
            let reply =
                self.raw("POST", &format!("/session/{}/element/{id}/click", self.session), Some(json!({}))).await;
            match reply["value"]["error"].as_str() {
                None => return,
                Some("stale element reference") => continue,
                Some(error) => panic!("webdriver click on {what}: {error}: {}", reply["value"]["message"]),
            }
        }
        panic!("{what} went stale five times in a row");
    }

    /// Types `text` into the element matching `css` (after clicking into it).
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.cmd("POST", &format!("/element/{id}/click"), Some(json!({}))).await;
        self.cmd("POST", &format!("/element/{id}/value"), Some(json!({ "text": text }))).await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.cmd("POST", "/execute/sync", Some(json!({ "script": script, "args": args }))).await
    }

    /// Waits until the JavaScript expression `condition` is truthy in the page and returns its
    /// value; panics after [`WAIT`] with `what` and the visible text of the page.
    pub async fn wait_for(&self, what: &str, condition: &str) -> Value {
        // Built as source, not with `new Function`: the page's policy forbids eval.
        let script = format!(
            "const done = arguments[arguments.length - 1];\n\
             const check = () => {{ let v = false; try {{ v = ({condition}); }} catch (e) {{ v = false; }}\n\
               if (v) done(v); else setTimeout(check, 20); }};\n\
             check();"
        );
        let reply = self
            .raw(
                "POST",
                &format!("/session/{}/execute/async", self.session),
                Some(json!({ "script": script, "args": [] })),
            )
            .await;
        if let Some(error) = reply["value"]["error"].as_str() {
            let text = self.execute("return document.body.innerText;", json!([])).await;
            panic!("waited {WAIT:?} for {what} ({error}); the page shows:\n{}", text.as_str().unwrap_or_default());
        }
        reply["value"].clone()
    }

    /// Browser console entries since the last call (chromedriver hands each out once).
    pub async fn console(&self) -> Vec<Value> {
        let v = self.cmd("POST", "/se/log", Some(json!({ "type": "browser" }))).await;
        v.as_array().cloned().unwrap_or_default()
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let v = self.cmd("GET", "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD.decode(v.as_str().expect("base64 screenshot")).expect("valid base64")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ask for a clean end of the session (Chromium quits), with a plain blocking socket
        // because Drop cannot await; then make sure, by PID, that nothing we started lives on.
        if let (false, Ok(mut s)) = (self.session.is_empty(), std::net::TcpStream::connect(("127.0.0.1", self.port))) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session, self.port
            );
            if s.write_all(request.as_bytes()).is_ok() {
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink);
            }
        }
        let mut tree = Vec::new();
        let mut next = vec![self.driver.id()];
        while let Some(pid) = next.pop() {
            let children = children_of(pid);
            next.extend(&children);
            tree.extend(children);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        for &pid in &tree {
            send_signal(pid, "TERM");
        }
        reap_or_kill(&tree, Duration::from_secs(5));
    }
}
