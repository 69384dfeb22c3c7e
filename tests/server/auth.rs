//! Optional bearer tokens: uploads and deletes need the upload token, runs the run token.

use crate::harness::{Server, data_dir, error_of, fixture};

fn upload_with(server: &Server, token: Option<&str>) -> reqwest::blocking::Response {
    let client = crate::harness::client();
    let mut request = client
        .post(format!("{}/upload?name=m", server.url))
        .header("content-type", "application/wasm")
        .body(fixture("count_vowels.wasm"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().unwrap()
}

#[test]
fn upload_token_guards_upload_and_delete_but_not_run() {
    let server = Server::start(
        &data_dir("auth-upload"),
        &[],
        &[("IOTA_UPLOAD_TOKEN", "s3cret")],
    );
    let (status, error) = error_of(upload_with(&server, None));
    assert_eq!(
        (status, error.as_str()),
        (401, "missing or invalid bearer token")
    );
    let wrong = upload_with(&server, Some("s3cre"));
    assert_eq!(wrong.headers()["www-authenticate"], "Bearer");
    assert_eq!(error_of(wrong).0, 401);
    assert_eq!(upload_with(&server, Some("s3cret")).status(), 201);

    assert_eq!(
        server.run("name=m", "ae").text().unwrap(),
        "2\n",
        "runs stay open"
    );
    assert_eq!(error_of(server.delete("/modules/m")).0, 401);
    let client = crate::harness::client();
    let deleted = client
        .delete(format!("{}/modules/m", server.url))
        .bearer_auth("s3cret")
        .send()
        .unwrap();
    assert_eq!(deleted.status(), 204);
}

#[test]
fn run_token_guards_runs() {
    let server = Server::start(&data_dir("auth-run"), &["--run-token", "r"], &[]);
    server.upload_ok("m", &fixture("count_vowels.wasm"));
    assert_eq!(error_of(server.run("name=m", "a")).0, 401);
    assert_eq!(
        error_of(server.run_with("name=m", "a", &[("authorization", "Bearer x")])).0,
        401
    );
    let ok = server.run_with("name=m", "a", &[("authorization", "Bearer r")]);
    assert_eq!(ok.text().unwrap(), "1\n");
}
