//! netconduit's TCP listener from the library: authentication (open, a password whose
//! hash is refused unless accepted, guesses throttled per address), a message relayed
//! to a WebSocket client, a call answered in netconduit's shape, and hostile frames.
//! The real netconduit client from PyPI is `tests/python/test_netconduit.py`.
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use switchboard_proto::netconduit::{HEADER_LEN, Header, Kind, decode_payload, encode_frame};
use switchboard_server::{NetconduitConfig, RpcMethod, Server, ServerConfig};
use switchboard_test::{RawClient, TIMEOUT, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A server (WebSocket on port 0) also serving netconduit on another port 0.
async fn start(
    password: Option<&str>,
    config: NetconduitConfig,
) -> (TestServer, std::net::SocketAddr) {
    let server_config = ServerConfig {
        relay_unhandled: true,
        password: password.map(str::to_owned),
        ..TestServer::config()
    };
    start_with(server_config, config).await
}

async fn start_with(
    server_config: ServerConfig,
    config: NetconduitConfig,
) -> (TestServer, std::net::SocketAddr) {
    let server = TestServer::start(Server::builder().config(server_config).rpc_method(
        RpcMethod::new("double", |(n,): (i64,)| async move { n * 2 }),
    ))
    .await;
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let s = server.server.clone();
    tokio::spawn(async move { s.serve_netconduit(tcp, config).await });
    (server, addr)
}

async fn read(tcp: &mut TcpStream) -> (Header, Value) {
    let mut head = [0u8; HEADER_LEN];
    tokio::time::timeout(TIMEOUT, tcp.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    let header = Header::parse(&head, 1 << 20).unwrap();
    let mut body = vec![0u8; header.length as usize];
    tcp.read_exact(&mut body).await.unwrap();
    (header, decode_payload(&header, &body, 1 << 20).unwrap())
}

async fn login(addr: std::net::SocketAddr, hash: &str) -> (TcpStream, Header, Value) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let auth = json!({"password_hash": hash, "client_info": {"name": "test"}});
    tcp.write_all(&encode_frame(Kind::AuthRequest, 0, Some(&auth)))
        .await
        .unwrap();
    let (header, payload) = read(&mut tcp).await;
    (tcp, header, payload)
}

/// sha256("pw") in hex.
const PW_HASH: &str = "30c952fab122c3f9759f02a6d95c3758b246b4fee239957b2d4fee46e26170c4";

#[tokio::test]
async fn an_open_server_lets_a_netconduit_client_talk_to_websocket_clients() {
    let (server, addr) = start(None, NetconduitConfig::open()).await;
    let mut web = RawClient::connect(&server.url()).await;
    web.recv_type("connected").await;
    let (mut nc, header, welcome) = login(addr, "anything").await;
    assert_eq!(header.kind, Kind::AuthSuccess);
    let id = welcome["server_info"]["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // A message to everyone else reaches the WebSocket client, from the netconduit one.
    let m = json!({"type": "note", "data": {"n": 1}});
    nc.write_all(&encode_frame(Kind::Message, 0, Some(&m)))
        .await
        .unwrap();
    let got = web.recv_type("note").await;
    assert_eq!(
        (got["payload"].clone(), got["from"].as_str()),
        (json!({"n": 1}), Some(id.as_str()))
    );
    // And back: a direct message to the netconduit client.
    web.send(json!({"type": "note", "to": id, "payload": {"n": 2}}))
        .await;
    let (h, p) = read(&mut nc).await;
    assert_eq!(
        (h.kind, p),
        (Kind::Message, json!({"type": "note", "data": {"n": 2}}))
    );
    // Paused, it is sent nothing; resumed, it gets what waited.
    nc.write_all(&encode_frame(Kind::Pause, 0, None))
        .await
        .unwrap();
    nc.write_all(&encode_frame(Kind::Ping, 0, None))
        .await
        .unwrap();
    assert_eq!(read(&mut nc).await.0.kind, Kind::Pong); // the pause was read
    web.send(json!({"type": "note", "to": id, "payload": {"n": 3}}))
        .await;
    let mut byte = [0u8; 1];
    let quiet = tokio::time::timeout(std::time::Duration::from_millis(300), nc.peek(&mut byte));
    assert!(quiet.await.is_err(), "nothing is sent while paused");
    nc.write_all(&encode_frame(Kind::Resume, 0, None))
        .await
        .unwrap();
    let (_, p) = read(&mut nc).await;
    assert_eq!(p["data"], json!({"n": 3}));
    // A call keeps its correlation id; the answer is netconduit's shape.
    let call = json!({"method": "double", "params": [21]});
    nc.write_all(&encode_frame(Kind::RpcRequest, 99, Some(&call)))
        .await
        .unwrap();
    let (h, p) = read(&mut nc).await;
    assert_eq!((h.kind, h.correlation), (Kind::RpcResponse, 99));
    assert_eq!(
        p,
        json!({"success": true, "result": {"success": true, "data": 42}})
    );
    server.stop().await;
}

#[tokio::test]
async fn a_password_hash_is_refused_unless_accepted_and_guesses_are_throttled() {
    let (server, addr) = start(Some("pw"), NetconduitConfig::with_password("pw")).await;
    let (_, header, payload) = login(addr, PW_HASH).await;
    assert_eq!(header.kind, Kind::AuthFailure);
    assert!(
        payload["reason"]
            .as_str()
            .unwrap()
            .contains("does not accept"),
        "{payload}"
    );
    server.stop().await;

    let config = NetconduitConfig::with_password("pw").accept_password_hash(true);
    let (server, addr) = start(Some("pw"), config).await;
    let (_, header, _) = login(addr, PW_HASH).await;
    assert_eq!(header.kind, Kind::AuthSuccess);
    for _ in 0..5 {
        let (_, header, payload) = login(addr, "0000").await;
        assert_eq!(
            (header.kind, payload["reason"].as_str()),
            (Kind::AuthFailure, Some("Invalid password"))
        );
    }
    // Past the limit, even the right hash waits (the address is throttled).
    let (_, header, payload) = login(addr, PW_HASH).await;
    assert_eq!(header.kind, Kind::AuthFailure);
    assert!(
        payload["reason"].as_str().unwrap().contains("too many"),
        "{payload}"
    );
    server.stop().await;
}

#[tokio::test]
async fn hostile_frames_are_answered_then_closed_and_the_server_carries_on() {
    let (server, addr) = start(None, NetconduitConfig::open()).await;
    // Not netconduit at all.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n")
        .await
        .unwrap();
    let (h, p) = read(&mut tcp).await;
    assert_eq!(h.kind, Kind::AuthFailure);
    assert!(p["reason"].as_str().unwrap().contains("magic"), "{p}");
    // A length of 4 GiB, after authenticating: refused from the header, then closed.
    let (mut nc, _, _) = login(addr, "x").await;
    let mut huge = encode_frame(Kind::Message, 0, None);
    huge[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
    nc.write_all(&huge).await.unwrap();
    let (_, p) = read(&mut nc).await;
    assert_eq!(p["data"]["code"], "MESSAGE_TOO_LARGE", "{p}");
    let mut rest = Vec::new();
    tokio::time::timeout(TIMEOUT, nc.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    // A wrong shape is answered, and the connection stays (a ping is still answered).
    let (mut nc, _, _) = login(addr, "x").await;
    nc.write_all(&encode_frame(Kind::Message, 0, Some(&json!([1, 2]))))
        .await
        .unwrap();
    let (_, p) = read(&mut nc).await;
    assert_eq!(p["data"]["code"], "INVALID_PAYLOAD", "{p}");
    nc.write_all(&encode_frame(Kind::Ping, 0, None))
        .await
        .unwrap();
    assert_eq!(read(&mut nc).await.0.kind, Kind::Pong);
    server.stop().await;
}

#[tokio::test]
async fn a_full_server_answers_netconduit_clients_at_once() {
    let full = ServerConfig {
        max_connections: 1,
        ..TestServer::config()
    };
    let (server, addr) = start_with(full, NetconduitConfig::open()).await;
    let (_first, header, _) = login(addr, "x").await;
    assert_eq!(header.kind, Kind::AuthSuccess);
    // The second is told why, not left waiting.
    let (_, header, payload) = login(addr, "x").await;
    assert_eq!(header.kind, Kind::AuthFailure);
    assert!(
        payload["reason"]
            .as_str()
            .unwrap()
            .contains("connection limit"),
        "{payload}"
    );
    server.stop().await;
}
