//! The members' side of failure detection: one [`MemberServer`] per address of the layout, each
//! hosting the members at that address, as members hosted by one process are. Member `n` is
//! found by its [`Layout`] number; see [`crate::member_server`] for how a member or a whole
//! server crashes.

use super::Layout;
use crate::bench::BenchError;
use crate::member_server::MemberServer;

/// The member servers, one per address.
pub(in crate::bench) struct MemberServers {
    layout: Layout,
    servers: Vec<MemberServer>,
}

impl MemberServers {
    /// Starts one server per address of `layout`, each on a free port. They count probes; they
    /// keep none, since there are many.
    pub async fn start(layout: Layout) -> Result<MemberServers, BenchError> {
        let mut servers = Vec::with_capacity(layout.addresses as usize);
        for _ in 0..layout.addresses {
            servers.push(MemberServer::start_counting().await.map_err(BenchError::MemberServer)?);
        }
        Ok(MemberServers { layout, servers })
    }

    /// `127.0.0.1:PORT` of address `a`.
    pub fn address(&self, a: u32) -> String {
        self.servers[a as usize].address()
    }

    /// Probe requests seen so far, for anyone.
    pub fn total(&self) -> u64 {
        self.servers.iter().map(MemberServer::total).sum()
    }

    /// Probes member `n` has seen so far.
    pub fn probes_of(&self, n: u32) -> u64 {
        self.servers[self.layout.address(n) as usize].probe_count(&self.layout.id(n))
    }

    /// From now on, probes for these members go unanswered: their connection closes.
    pub fn crash_members(&self, members: &[u32]) {
        for &n in members {
            self.servers[self.layout.address(n) as usize].crash_member(&self.layout.id(n));
        }
    }

    /// Stops the server of address `a`: no new connections, open ones closed.
    pub fn crash_address(&self, a: u32) {
        self.servers[a as usize].crash();
    }

    /// Stops every server.
    pub async fn stop(self) {
        for server in self.servers {
            server.stop().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn layout() -> Layout {
        Layout { members: 4, addresses: 2, groups: 1 }
    }

    /// A probe of member `n` as GM sends it.
    async fn get(client: &reqwest::Client, servers: &MemberServers, n: u32) -> Result<u16, reqwest::Error> {
        let url = format!("http://{}/gm/heartbeat", servers.address(layout().address(n)));
        let answer = client.get(url).header("X-GM-Member", layout().id(n)).send().await?;
        Ok(answer.status().as_u16())
    }

    #[tokio::test]
    async fn members_answer_until_they_crash() {
        let servers = MemberServers::start(layout()).await.expect("servers");
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
        for n in 0..4 {
            assert_eq!(get(&client, &servers, n).await.expect("answer"), 200);
        }
        assert_eq!(servers.probes_of(2), 1);

        // Members 0 and 2 share address 0: 2 crashes, 0 still answers on the same address.
        servers.crash_members(&[2]);
        assert!(get(&client, &servers, 2).await.is_err(), "a crashed member gives no answer");
        assert_eq!(get(&client, &servers, 0).await.expect("answer"), 200);

        // Address 1 stops: members 1 and 3 are gone, even over a pooled connection.
        servers.crash_address(1);
        assert!(get(&client, &servers, 1).await.is_err());
        assert!(get(&client, &servers, 3).await.is_err());
        assert_eq!(get(&client, &servers, 0).await.expect("answer"), 200);
        assert_eq!(servers.total(), 4 + 2 + 1);
        servers.stop().await;
    }
}
