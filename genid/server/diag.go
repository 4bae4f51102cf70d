package server

import (
	"encoding/binary"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/genid/wire"
)

// sock_diag constants for AF_UNIX (linux/unix_diag.h).
const (
	sockDiagByFamily = 20
	udiagShowPeer    = 0x4
	unixDiagPeer     = 2
)

// queryPeer answers OpQueryPeer: given the inode of a client's end of a
// connection (what CRIU reports for a dumped socket), tell whether that
// connection is a watcher and what it acked. CRIU's plugin asks this at dump
// time, without touching the dumped task's socket.
func (c *conn) queryPeer(f wire.Frame) {
	ino, err := wire.ParseInode(f.Payload)
	if err != nil {
		c.replyErr(f.Header, fmt.Errorf("query-peer: %v: %w", err, genid.ErrBadRequest))
		return
	}
	target, err := c.srv.connByPeerInode(ino)
	if err != nil {
		c.replyErr(f.Header, fmt.Errorf("query-peer %d: %w", ino, err))
		return
	}
	var flags, acked uint32
	if w := target.watcher.Load(); w != nil {
		flags, acked = wire.FlagWatcher, w.Acked()
	}
	c.reply(f.Header, wire.U32s(flags, acked))
}

// connByPeerInode finds the connection whose client end has inode ino. The
// kernel knows the pairs: a sock_diag dump lists unix sockets with their
// peers' inodes. A stream connect creates our end in the client's network
// namespace, so each namespace our ends live in is dumped on its own.
//
// It runs on the event loop, which alone closes connections: their fds stay
// valid throughout.
func (s *Server) connByPeerInode(ino uint64) (*conn, error) {
	conns := s.loop.conns()

	type netns struct {
		fd    int // -1: ours
		conns []*conn
	}
	spaces := map[uint64]*netns{}
	defer func() {
		for _, ns := range spaces {
			if ns.fd >= 0 {
				unix.Close(ns.fd)
			}
		}
	}()
	for _, c := range conns {
		if c.ino == 0 { // looked up once, here: most connections are never asked about
			id, err := fdID(c.fd)
			if err != nil {
				continue
			}
			c.ino = id.ino
		}
		key, fd, err := c.netns()
		if err != nil {
			continue // gone meanwhile
		}
		ns := spaces[key]
		if ns == nil {
			ns = &netns{fd: fd}
			spaces[key] = ns
		} else if fd >= 0 {
			unix.Close(fd)
		}
		ns.conns = append(ns.conns, c)
	}
	for _, ns := range spaces {
		peers, err := unixPeers(ns.fd)
		if err != nil {
			return nil, fmt.Errorf("sock_diag: %w", err)
		}
		for _, c := range ns.conns {
			if p, ok := peers[c.ino]; ok && uint64(p) == ino {
				return c, nil
			}
		}
	}
	return nil, genid.ErrNotFound
}

// netns identifies the network namespace of our end of the connection and
// returns an fd of it, or -1 when it is the daemon's own (or unknown: an
// unprivileged daemon cannot look, and serves its own namespace only).
func (c *conn) netns() (uint64, int, error) {
	nsfd, err := unix.IoctlRetInt(c.fd, unix.SIOCGSKNS)
	if err != nil {
		return 0, -1, nil
	}
	self, err := ownNetNS()
	id, ferr := fdID(nsfd)
	if err != nil || ferr != nil || id == self {
		unix.Close(nsfd)
		return 0, -1, nil
	}
	return id.ino, nsfd, nil
}

// unixPeers maps the inode of every connected unix socket of a network
// namespace (nsfd, or ours if -1) to its peer's inode.
func unixPeers(nsfd int) (map[uint64]uint32, error) {
	var cfg *netlink.Config
	if nsfd >= 0 {
		cfg = &netlink.Config{NetNS: nsfd}
	}
	nl, err := netlink.Dial(unix.NETLINK_SOCK_DIAG, cfg)
	if err != nil {
		return nil, err
	}
	defer nl.Close()
	// struct unix_diag_req
	req := make([]byte, 24)
	req[0] = unix.AF_UNIX
	binary.NativeEndian.PutUint32(req[4:], 1<<1) // udiag_states: TCP_ESTABLISHED, i.e. connected
	binary.NativeEndian.PutUint32(req[12:], udiagShowPeer)
	binary.NativeEndian.PutUint32(req[16:], ^uint32(0)) // no cookie
	binary.NativeEndian.PutUint32(req[20:], ^uint32(0))
	msgs, err := nl.Execute(netlink.Message{
		Header: netlink.Header{Type: sockDiagByFamily, Flags: netlink.Request | netlink.Dump},
		Data:   req,
	})
	if err != nil {
		return nil, err
	}
	peers := make(map[uint64]uint32, len(msgs))
	for _, m := range msgs {
		// struct unix_diag_msg: family, type, state, pad, ino u32, cookie[2]
		if len(m.Data) < 16 {
			continue
		}
		ino := binary.NativeEndian.Uint32(m.Data[4:])
		ad, err := netlink.NewAttributeDecoder(m.Data[16:])
		if err != nil {
			continue
		}
		for ad.Next() {
			if ad.Type() == unixDiagPeer {
				peers[uint64(ino)] = ad.Uint32()
			}
		}
	}
	return peers, nil
}
