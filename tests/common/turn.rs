//! The `turn` crate's client (webrtc-rs) as a second, independent TURN
//! implementation: one UDP allocation on the daemon, with bounded waits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

use super::REALM;

/// The longest one exchange may take.
pub const WAIT: Duration = Duration::from_secs(5);

/// A client with its allocation (the relay connection).
pub struct TurnAllocation {
    pub client: Client,
    pub relay: Box<dyn Conn + Send + Sync>,
}

impl TurnAllocation {
    /// Allocates on `server` (UDP) as `username`; the error when refused.
    pub async fn make(server: SocketAddr, username: &str, password: &str) -> Result<Self, String> {
        Self::make_from("127.0.0.1:0", server, username, password).await
    }

    /// [`Self::make`] from a client socket bound to `local`.
    pub async fn make_from(
        local: &str,
        server: SocketAddr,
        username: &str,
        password: &str,
    ) -> Result<Self, String> {
        let socket = UdpSocket::bind(local).await.expect("bind client");
        let client = Client::new(ClientConfig {
            stun_serv_addr: server.to_string(),
            turn_serv_addr: server.to_string(),
            username: username.to_owned(),
            password: password.to_owned(),
            realm: REALM.to_owned(),
            software: String::new(),
            rto_in_ms: 0,
            conn: Arc::new(socket),
            vnet: None,
        })
        .await
        .expect("turn client");
        client.listen().await.expect("listen");
        let relay = tokio::time::timeout(WAIT, client.allocate())
            .await
            .map_err(|_| "Allocate not answered in time".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok(Self {
            client,
            relay: Box::new(relay),
        })
    }

    pub fn relayed(&self) -> SocketAddr {
        self.relay.local_addr().expect("relayed address")
    }

    /// Sends `data` to `peer` through the relay, and asserts that `peer`
    /// (a socket of the test's) gets it, from the relayed address.
    pub async fn relays_to(&self, peer: &UdpSocket, data: &[u8]) {
        let target = peer.local_addr().unwrap();
        tokio::time::timeout(WAIT, self.relay.send_to(data, target))
            .await
            .expect("send in time")
            .expect("send through the relay");
        let mut buf = vec![0u8; 1500];
        let (len, from) = tokio::time::timeout(WAIT, peer.recv_from(&mut buf))
            .await
            .expect("the peer receives in time")
            .expect("peer recv");
        assert_eq!(&buf[..len], data);
        assert_eq!(from, self.relayed());
    }

    /// `peer` sends `data` to the relayed address; the client gets it.
    pub async fn receives_from(&self, peer: &UdpSocket, data: &[u8]) {
        peer.send_to(data, self.relayed()).await.expect("peer send");
        let mut buf = vec![0u8; 1500];
        let (len, from) = tokio::time::timeout(WAIT, self.relay.recv_from(&mut buf))
            .await
            .expect("the client receives in time")
            .expect("relay recv");
        assert_eq!(&buf[..len], data);
        assert_eq!(from, peer.local_addr().unwrap());
    }

    pub async fn close(self) {
        let _ = self.relay.close().await;
        let _ = self.client.close().await;
    }
}
