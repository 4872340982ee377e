//! The kernel's socket diagnostics (`NETLINK_SOCK_DIAG`), asked about one
//! TCP connection by its two addresses.
//!
//! The health probe needs the inode of the socket a worker accepted for
//! the probe's connection. /proc/net/tcp{,6} lists every TCP socket of the
//! host as text, so reading it costs time in proportion to the host's
//! connections (tens of milliseconds with the tens of thousands a load
//! leaves in TIME_WAIT); sock_diag looks one connection up in the kernel's
//! hash table by its 4-tuple, in microseconds whatever else the host holds.

use std::io;
use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{
    ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket};

/// Asks for no cookie: the lookup is by addresses alone.
const NO_COOKIE: [u8; 8] = [0xff; 8];

/// A netlink socket for asking about connections.
pub struct SockDiag {
    socket: Socket,
    sequence: u32,
}

impl SockDiag {
    pub fn open() -> io::Result<SockDiag> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        Ok(SockDiag {
            socket,
            sequence: 0,
        })
    }

    /// The inode of the socket `server`'s side holds for the connection
    /// from `client`: `Ok(None)` while no process has accepted it (a
    /// connection in the accept queue has no inode yet) or when there is no
    /// such connection.
    pub fn accepted_inode(
        &mut self,
        server: SocketAddr,
        client: SocketAddr,
    ) -> io::Result<Option<u64>> {
        let (family, mut socket_id) = match (server.ip().to_canonical(), client.ip().to_canonical())
        {
            (IpAddr::V4(server_ip), IpAddr::V4(client_ip)) => {
                let mut id = SocketId::new_v4();
                (id.source_address, id.destination_address) =
                    (IpAddr::V4(server_ip), IpAddr::V4(client_ip));
                (AF_INET, id)
            }
            _ => {
                let mut id = SocketId::new_v6();
                (id.source_address, id.destination_address) = (v6(server.ip()), v6(client.ip()));
                (AF_INET6, id)
            }
        };
        socket_id.source_port = server.port();
        socket_id.destination_port = client.port();
        socket_id.cookie = NO_COOKIE;
        let mut found = None;
        self.ask(family, StateFlags::all(), socket_id, false, |response| {
            // The kernel answers with the listening socket when no
            // connection has these addresses: only the connection's own
            // socket, which names the client, counts.
            if response.header.socket_id.destination_port == client.port() {
                found = Some(u64::from(response.header.inode)).filter(|&inode| inode != 0);
            }
        })?;
        Ok(found)
    }

    /// The inodes of the established connections whose local port is
    /// `port` and that a process has accepted: those a listener on `port`
    /// handed out.
    pub fn accepted_inodes(&mut self, port: u16) -> io::Result<Vec<u64>> {
        let mut inodes = Vec::new();
        for (family, socket_id) in [
            (AF_INET, SocketId::new_v4()),
            (AF_INET6, SocketId::new_v6()),
        ] {
            self.ask(
                family,
                StateFlags::ESTABLISHED,
                socket_id,
                true,
                |response| {
                    let header = &response.header;
                    if header.socket_id.source_port == port && header.inode != 0 {
                        inodes.push(u64::from(header.inode));
                    }
                },
            )?;
        }
        Ok(inodes)
    }

    /// Sends one request and hands each socket of its answer to `each`.
    /// A request for a connection that does not exist is answered with no
    /// socket.
    fn ask(
        &mut self,
        family: u8,
        states: StateFlags,
        socket_id: SocketId,
        dump: bool,
        mut each: impl FnMut(&InetResponse),
    ) -> io::Result<()> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
        header.sequence_number = self.sequence;
        let mut request = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::empty(),
                states,
                socket_id,
            })
            .into(),
        );
        request.finalize();
        let mut buffer = vec![0; request.buffer_len()];
        request.serialize(&mut buffer);
        self.socket.send(&buffer, 0)?;

        let mut answer = vec![0; 32 * 1024];
        loop {
            let len = self.socket.recv(&mut &mut answer[..], 0)?;
            let mut offset = 0;
            while offset < len {
                let message = NetlinkMessage::<SockDiagMessage>::deserialize(&answer[offset..len])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let length = message.header.length as usize;
                if message.header.sequence_number == self.sequence {
                    match message.payload {
                        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                            each(&response);
                            if !dump {
                                return Ok(());
                            }
                        }
                        NetlinkPayload::Done(_) => return Ok(()),
                        // ENOENT: no such connection.
                        NetlinkPayload::Error(error) if error.raw_code() == -libc::ENOENT => {
                            return Ok(())
                        }
                        NetlinkPayload::Error(error) => return Err(error.to_io()),
                        _ => {}
                    }
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    }
}

/// An address as an IPv6 one (IPv4 ones mapped).
fn v6(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(ip) => IpAddr::V6(ip.to_ipv6_mapped()),
        ip => ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    /// Both lookups (this one, and the TCP table's where sock_diag is
    /// missing) find the socket, and only the process holding it holds it.
    fn finds_the_accepted_socket_of_a_connection_as_the_tcp_table_does() {
        let mut diag = SockDiag::open().expect("sock_diag");
        for loopback in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(listener) = std::net::TcpListener::bind(loopback) else {
                continue; // No IPv6 here.
            };
            let server = listener.local_addr().unwrap();
            let client = std::net::TcpStream::connect(server).unwrap();
            let from = client.local_addr().unwrap();
            assert_eq!(diag.accepted_inode(server, from).unwrap(), None, "queued");
            assert_eq!(crate::procfs::table_accepted_inode(server, from), None);
            let (accepted, _) = listener.accept().unwrap();
            let inode = diag
                .accepted_inode(server, from)
                .unwrap()
                .expect("accepted");
            assert_eq!(
                Some(inode),
                crate::procfs::table_accepted_inode(server, from)
            );
            assert!(crate::procfs::tree_holds(std::process::id(), inode));
            drop(accepted);
            assert!(!crate::procfs::tree_holds(std::process::id(), inode));
            let nobody = SocketAddr::new(from.ip(), 1);
            assert_eq!(diag.accepted_inode(server, nobody).unwrap(), None);
            let _open = std::net::TcpStream::connect(server).unwrap();
            let (kept, _) = listener.accept().unwrap();
            let kept = nix::sys::stat::fstat(&kept).unwrap().st_ino;
            assert_eq!(diag.accepted_inodes(server.port()).unwrap(), vec![kept]);
        }
    }
}
