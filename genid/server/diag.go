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
// kernel knows the pairs: a sock_diag dump of this network namespace's unix
// sockets lists our ends with their peers' inodes, wherever the peers live.
func (s *Server) connByPeerInode(ino uint64) (*conn, error) {
	peers, err := unixPeers()
	if err != nil {
		return nil, fmt.Errorf("sock_diag: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		if p, ok := peers[c.ino]; ok && uint64(p) == ino {
			return c, nil
		}
	}
	return nil, genid.ErrNotFound
}

// unixPeers maps the inode of every connected unix socket of this network
// namespace to its peer's inode.
func unixPeers() (map[uint64]uint32, error) {
	nl, err := netlink.Dial(unix.NETLINK_SOCK_DIAG, nil)
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
