//! The listener's limits, attacked the way the review did: thousands of idle and trickling
//! connections from many addresses, one address hoarding connections, a body sent a byte at a time.
//! Real clients are still answered promptly, and stalled connections are closed.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::{Backend, PASSWORD, TestApp};

/// A connection to `to` from the loopback address 127.0.0.`from`.
async fn connect_from(from: u8, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, from), 0)))?;
    socket.connect(to).await
}

fn addr(app: &TestApp) -> SocketAddr {
    app.base.trim_start_matches("http://").parse().unwrap()
}

/// True when the server has closed the connection (EOF or reset) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    match tokio::time::timeout(within, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        // A 408 or other answer before the close: read on to the close.
        Ok(Ok(_)) => matches!(
            tokio::time::timeout(within, stream.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        ),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_trickling_connections_do_not_starve_real_clients() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.header_read_timeout_s = 2;
        c.max_connections_per_ip = 64;
    })
    .await;
    app.register("ann@example.com").await;
    let to = addr(&app);
    // 1,500 idle connections from 30 addresses, and 300 that trickle their headers.
    let mut idle = Vec::new();
    for i in 0..1_500u32 {
        idle.push(connect_from(2 + (i % 30) as u8, to).await.unwrap());
    }
    let mut trickling = Vec::new();
    for i in 0..300u32 {
        let mut s = connect_from(40 + (i % 10) as u8, to).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        trickling.push(s);
    }
    let trickler = tokio::spawn(async move {
        for _ in 0..10 {
            for s in &mut trickling {
                let _ = s.write_all(b"X-Slow: 1\r\n").await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        trickling
    });
    let started = Instant::now();
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app.login("ann@example.com", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered in {:?} with 1,800 hostile connections open",
        started.elapsed()
    );
    // The header-read timeout sheds them: idle ones and the ones still trickling headers.
    assert!(
        closed_within(&mut idle[0], Duration::from_secs(4)).await,
        "an idle connection stays open"
    );
    let mut trickling = trickler.await.unwrap();
    assert!(
        closed_within(&mut trickling[0], Duration::from_secs(2)).await,
        "a connection stalled in its headers stays open"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.header_read_timeout_s = 30;
        c.max_connections_per_ip = 20;
    })
    .await;
    let to = addr(&app);
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(connect_from(7, to).await.unwrap());
    }
    // Give the accept loop time to count them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = connect_from(7, to).await.unwrap();
    assert!(
        closed_within(&mut extra, Duration::from_secs(2)).await,
        "the 21st is closed at once"
    );
    assert!(
        !closed_within(&mut held[0], Duration::from_millis(300)).await,
        "the first 20 stay"
    );
    // Another address is served as usual; and once one closes, the address may connect again.
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = connect_from(7, to).await.unwrap();
    again
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    again.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickled_past_its_deadline_gets_408() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.request_body_timeout_s = 1).await;
    let mut s = TcpStream::connect(addr(&app)).await.unwrap();
    s.write_all(
        b"POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"email\":",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(800));
    // The login itself still works for everyone else.
    let r = app
        .post_json(
            "/v1/auth/login",
            &json!({"email": "x@example.com", "password": "nope nope nope"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_new_clients_wait_for_the_timeouts_to_shed_idle_ones() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.header_read_timeout_s = 1;
        c.max_connections = 100;
        c.max_connections_per_ip = 10;
    })
    .await;
    let to = addr(&app);
    let mut idle = Vec::new();
    for i in 0..100u32 {
        idle.push(connect_from(60 + (i % 10) as u8, to).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let r = client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(5),
        "served after {waited:?}: the cap held it until idle connections were shed"
    );
    drop(idle);
    app.stop().await;
}
