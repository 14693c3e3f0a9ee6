//! Connections and bodies: no body before its token, forms, slow and idle clients, HTTP/2, clients
//! that stop reading, long-polls bounded.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_body_is_read_before_its_token_and_package_are_checked() {
    let db = TestDb::new().await;
    let server = start(&db, &[]);
    let http = Client::new();
    let package = new_package(&http, &server, ALPHA_WRITER).await;
    let form_head = |token: Option<&str>, package: &str| {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        format!(
            "POST /packages/{package}/files HTTP/1.1\r\n{auth}\
             Content-Type: multipart/form-data; boundary=xyz\r\n"
        )
    };
    let part = b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\n";
    let mut start_of_form = part.to_vec();
    start_of_form.extend_from_slice(&[b'x'; 60_000]);
    let unknown = uuid::Uuid::now_v7().to_string();
    let json_head = "POST /packages HTTP/1.1\r\nContent-Type: application/json\r\n".to_owned();
    // (what is wrong, request head, Content-Length announced, bytes sent, answer before the body)
    let cases: [(&str, String, u64, &[u8], u16); 4] = [
        (
            "no token",
            form_head(None, &package),
            1 << 30,
            &start_of_form,
            401,
        ),
        (
            "a read token",
            form_head(Some(ALPHA_READER), &package),
            1 << 26,
            &start_of_form,
            403,
        ),
        (
            "an unknown package",
            form_head(Some(ALPHA_WRITER), &unknown),
            1 << 26,
            &start_of_form,
            404,
        ),
        (
            "JSON without a token",
            json_head,
            8 << 20,
            b"{\"producer\": ",
            401,
        ),
    ];
    for (what, head, announced, sent, status) in cases {
        assert_eq!(
            answer_before_body(&server, &head, announced, sent).await,
            Some(status),
            "{what}"
        );
    }
}

#[tokio::test]
async fn forms_name_known_parts_and_echo_little() {
    let db = TestDb::new().await;
    let server = start(&db, &[]);
    let http = Client::new();
    let package = new_package(&http, &server, ALPHA_WRITER).await;
    // Text parts are small; forms name known parts, one file: refused otherwise.
    let file = |data: &[u8], name: &str| {
        reqwest::multipart::Part::bytes(data.to_vec()).file_name(name.to_owned())
    };
    let form = reqwest::multipart::Form::new;
    let send = |form: reqwest::multipart::Form| {
        http.post(server.url(&format!("/packages/{package}/files")))
            .bearer_auth(ALPHA_WRITER)
            .multipart(form)
            .send()
    };
    for (form, status) in [
        (
            form()
                .text("relative_path", "a".repeat(5000))
                .part("file", file(b"x", "x")),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            form().text("surprise", "x").part("file", file(b"x", "x")),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            form()
                .part("file", file(b"x", "x"))
                .part("file", file(b"y", "y")),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        assert_eq!(send(form).await.unwrap().status(), status);
    }
    // The text parts may come after the file part, as generated clients send them.
    let late = form()
        .part("file", file(b"late", "ignored"))
        .text("relative_path", "named/late.txt")
        .text("media_type", "text/plain");
    let file = json_of(send(late).await.unwrap(), StatusCode::CREATED).await;
    assert_eq!(file["relative_path"], "named/late.txt");
    assert_eq!(file["media_type"], "text/plain");
    let listed = json_of(
        http.get(server.url(&format!("/packages/{package}")))
            .bearer_auth(ALPHA_WRITER)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(listed["files"].as_array().unwrap().len(), 1, "{listed}");

    // A problem never echoes more than 1 KiB of what it was sent.
    let junk = "q".repeat(10_000);
    let resp = http
        .put(server.url(&format!(
            "/packages/{package}/files/x.bin?media_type={junk}"
        )))
        .bearer_auth(ALPHA_WRITER)
        .body("x")
        .send()
        .await
        .unwrap();
    let problem = json_of(resp, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(
        problem["detail"].as_str().unwrap().len() <= 1100,
        "{}",
        problem["detail"].as_str().unwrap().len()
    );
}

#[tokio::test]
async fn a_form_that_never_gets_to_its_parts_is_refused() {
    let db = TestDb::new().await;
    let server = start(&db, &[]);
    let http = Client::new();
    let package = new_package(&http, &server, ALPHA_WRITER).await;
    let url = server.url(&format!("/packages/{package}/files"));
    // Two MiB of preamble, and part headers that never end.
    let preamble = [vec![b'p'; 2 << 20], b"\r\n--xyz--\r\n".to_vec()].concat();
    let endless_headers = [
        b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\nX: ".to_vec(),
        vec![b'h'; 2 << 20],
    ]
    .concat();
    for body in [preamble, endless_headers] {
        let resp = http
            .post(&url)
            .bearer_auth(ALPHA_WRITER)
            .header("Content-Type", "multipart/form-data; boundary=xyz")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        assert!(
            status == StatusCode::PAYLOAD_TOO_LARGE || status == StatusCode::BAD_REQUEST,
            "{status}"
        );
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            let problem = json_of(resp, status).await;
            assert!(
                problem["detail"]
                    .as_str()
                    .unwrap()
                    .contains("other than the file")
            );
        }
    }
    // A path already taken, named before the file part: refused before the file is read.
    json_of(
        http.put(server.url(&format!("/packages/{package}/files/taken.bin")))
            .bearer_auth(ALPHA_WRITER)
            .body("x")
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let head = format!(
        "POST /packages/{package}/files HTTP/1.1\r\nAuthorization: Bearer {ALPHA_WRITER}\r\n\
         Content-Type: multipart/form-data; boundary=xyz\r\n"
    );
    let start_of_form = [
        b"--xyz\r\nContent-Disposition: form-data; name=\"relative_path\"\r\n\r\ntaken.bin\r\n"
            .to_vec(),
        b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n".to_vec(),
        vec![b'x'; 60_000],
    ]
    .concat();
    assert_eq!(
        answer_before_body(&server, &head, 1 << 30, &start_of_form).await,
        Some(409)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_cut_off_and_connections_are_capped() {
    let db = TestDb::new().await;
    let server = start(
        &db,
        &[
            ("ARTIFACTSTORE_HEADER_READ_TIMEOUT_SECONDS", "2"),
            ("ARTIFACTSTORE_BODY_IDLE_TIMEOUT_SECONDS", "2"),
            ("ARTIFACTSTORE_MAX_CONNECTIONS", "64"),
        ],
    );
    let addr = address(&server);
    // 100 half-sent heads and 50 connections that send nothing: all closed by the server,
    // though only 64 are served at once.
    let started = Instant::now();
    let slow = (0..150).map(|i| {
        let addr = addr.clone();
        async move {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            if i < 100 {
                s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                    .await
                    .unwrap();
            }
            read_until_closed(&mut s, Duration::from_secs(20)).await
        }
    });
    let closed = futures::future::join_all(slow).await;
    assert!(
        closed.iter().all(Option::is_some),
        "every slow connection was closed"
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
    // While the slots are taken, a real client waits, then is served.
    let http = Client::new();
    let resp = http.get(server.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // A kept-alive connection that goes quiet after a request is closed too.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("closed after going quiet");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // A chunk whose body goes quiet ends; the session keeps what arrived.
    let package = new_package(&http, &server, ALPHA_WRITER).await;
    let id = new_session(&http, &server, &package, "quiet.bin", Some(1000)).await;
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "PATCH /uploads/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALPHA_WRITER}\r\n\
         Content-Range: bytes 0-999/1000\r\nContent-Length: 1000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&[7u8; 100]).await.unwrap();
    let quiet = Instant::now();
    read_until_closed(&mut s, Duration::from_secs(15))
        .await
        .expect("the quiet chunk ended");
    assert!(quiet.elapsed() >= Duration::from_secs(2));
    let now = json_of(
        http.get(server.url(&format!("/uploads/{id}")))
            .bearer_auth(ALPHA_WRITER)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(now["offset"], 100, "{now}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_are_bounded_in_all_and_per_tenant() {
    let db = TestDb::new().await;
    let server = start(
        &db,
        &[
            ("ARTIFACTSTORE_MAX_LONG_POLLS", "5"),
            ("ARTIFACTSTORE_MAX_LONG_POLLS_PER_TENANT", "3"),
        ],
    );
    let http = Client::new();
    let poll = |token: &'static str| {
        let http = http.clone();
        let url = server.url("/events?since=1000000&wait=20");
        tokio::spawn(async move { http.get(url).bearer_auth(token).send().await })
    };
    let health = || async {
        let h = json_of(
            http.get(server.url("/health"))
                .bearer_auth(OPERATOR)
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await;
        h["events"]["waiting_requests"].as_u64().unwrap()
    };
    let until_waiting = |want: u64| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        while health().await != want {
            assert!(Instant::now() < deadline, "never {want} waiting");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let alpha: Vec<_> = (0..3).map(|_| poll(ALPHA_READER)).collect();
    until_waiting(3).await;
    let refused = http
        .get(server.url("/events?since=0&wait=20"))
        .bearer_auth(ALPHA_WRITER)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "1");
    let problem = json_of(refused, StatusCode::TOO_MANY_REQUESTS).await;
    assert!(
        problem["detail"].as_str().unwrap().contains("tenant"),
        "{problem}"
    );
    // Another tenant still has room, up to the server's limit.
    let beta: Vec<_> = (0..2).map(|_| poll(BETA_WRITER)).collect();
    until_waiting(5).await;
    let refused = http
        .get(server.url("/events?since=0&wait=20"))
        .bearer_auth(BETA_WRITER)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // A place given up (the client went away) is free again.
    for waiter in alpha.into_iter().chain(beta) {
        waiter.abort();
    }
    until_waiting(0).await;
    let resp = http
        .get(server.url("/events?since=0&wait=0"))
        .bearer_auth(ALPHA_READER)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_are_closed_like_http1_ones() {
    let db = TestDb::new().await;
    let server = start(&db, &[("ARTIFACTSTORE_HEADER_READ_TIMEOUT_SECONDS", "2")]);
    // One request, then nothing: the server closes the connection (GOAWAY, then EOF).
    let tcp = TcpStream::connect(address(&server)).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::get(format!("{}/health", server.base))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), connection)
        .await
        .expect("the idle HTTP/2 connection was closed")
        .unwrap()
        .ok();
    assert!(started.elapsed() >= Duration::from_millis(1500));
    // A connection that only says hello is closed too.
    let tcp = TcpStream::connect(address(&server)).await.unwrap();
    let (_client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::time::timeout(Duration::from_secs(15), connection)
        .await
        .expect("the silent HTTP/2 connection was closed")
        .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_download_is_cut_off() {
    let db = TestDb::new().await;
    let server = start(&db, &[("ARTIFACTSTORE_BODY_IDLE_TIMEOUT_SECONDS", "2")]);
    let http = Client::new();
    let package = new_package(&http, &server, ALPHA_WRITER).await;
    let size = 64usize << 20;
    let file = json_of(
        http.put(server.url(&format!("/packages/{package}/files/big.bin")))
            .bearer_auth(ALPHA_WRITER)
            .body(random_bytes(size, 8))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let mut s = TcpStream::connect(address(&server)).await.unwrap();
    let request = format!(
        "GET /files/{}/download HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALPHA_WRITER}\r\n\r\n",
        file["id"].as_str().unwrap()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    // Not reading: the socket buffers fill and the server's writes stop.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let got = read_until_closed(&mut s, Duration::from_secs(30))
        .await
        .expect("the server ended the connection");
    assert!(got.len() < size, "{} bytes of {size} arrived", got.len());
}
