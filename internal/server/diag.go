package server

import (
	"encoding/binary"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/internal/wire"
)

// query-peer tells the CRIU plugin, at dump, whether a dumped socket (known
// by the inode of the client's end, as CRIU reports it) is connected to
// the daemon, as a watcher of which scope, having acked what. The kernel
// knows which client end goes with which of the daemon's ends: a sock_diag
// dump of the unix sockets lists each with its peer's inode.
//
// One dump answers every query of a checkpoint: the daemon takes a
// snapshot (client end -> connection) when a query finds nothing newer to
// answer from, and answers the queries that came meanwhile from it. The
// dump runs on a goroutine of its own, off the loop, which serves everyone
// else meanwhile: a checkpoint of N watchers costs one dump, not N.

// peerSnapshot maps client-end inodes to the daemon's connections, as they
// were when it was taken.
type peerSnapshot struct {
	byClient map[uint64]*conn
	seq      uint64 // queries up to this number were asked before it was taken
}

type peerQuery struct {
	c   *conn
	h   wire.Header
	ino uint64
	seq uint64
}

// queries is the query-peer state of the daemon (loop only).
type queries struct {
	snap    *peerSnapshot
	pending []peerQuery
	running bool
	seq     uint64 // numbers the queries
}

func (s *Server) queryPeer(c *conn, h wire.Header, ino uint64) {
	q := &s.queries
	q.seq++
	pq := peerQuery{c, h, ino, q.seq}
	if q.snap != nil && s.answerPeer(pq, false) {
		return
	}
	q.pending = append(q.pending, pq)
	if !q.running {
		s.snapshotPeers()
	}
}

// answerPeer answers a query from the snapshot. Without a match it answers
// not found only if final (the snapshot was taken after the query came), and
// otherwise reports false: a newer snapshot may know the connection.
func (s *Server) answerPeer(q peerQuery, final bool) bool {
	target := s.queries.snap.byClient[q.ino]
	if target == nil || target.closed {
		if !final && s.queries.snap.seq < q.seq {
			return false
		}
		q.c.replyErr(q.h, fmt.Errorf("query-peer %d: no connection to this daemon: %w", q.ino, errNotFound))
		return true
	}
	var flags, acked uint32
	if w := target.watcher; w != nil {
		flags, acked = wire.FlagWatcher, w.Acked()
	}
	q.c.reply(q.h, wire.AppendName(wire.U32s(flags, acked), target.scope.name))
	return true
}

// snapshotPeers starts a snapshot: the connections' own inodes and
// network namespaces are read here, the sock_diag dumps run on a goroutine,
// and the result comes back to the loop.
func (s *Server) snapshotPeers() {
	q := &s.queries
	q.running = true
	seq := q.seq
	type member struct {
		c   *conn
		ino uint64
		ns  uint64
	}
	var members []member
	spaces := map[uint64]int{} // netns inode -> fd (noFD: the daemon's own)
	for _, c := range s.loop.conns() {
		if c.admin {
			continue
		}
		if c.ino == 0 { // looked up once: most connections are never asked about
			id, err := fdID(c.fd)
			if err != nil {
				continue
			}
			c.ino = id.ino
		}
		key, fd := c.netns()
		if _, ok := spaces[key]; ok {
			closeFD(fd)
		} else {
			spaces[key] = fd
		}
		members = append(members, member{c, c.ino, key})
	}
	go func() {
		peers := map[uint64]map[uint64]uint32{}
		var failed error
		for key, fd := range spaces {
			p, err := unixPeers(fd)
			closeFD(fd)
			if err != nil {
				failed = err
				continue
			}
			peers[key] = p
		}
		s.loop.post(func() {
			snap := &peerSnapshot{byClient: make(map[uint64]*conn, len(members)), seq: seq}
			for _, m := range members {
				if p, ok := peers[m.ns][m.ino]; ok && !m.c.closed {
					snap.byClient[uint64(p)] = m.c
				}
			}
			if failed != nil {
				s.log.Warn("query-peer: sock_diag", "err", failed)
			}
			q.snap, q.running = snap, false
			pending := q.pending
			q.pending = nil
			for _, pq := range pending {
				if !pq.c.closed {
					s.answerPeer(pq, true)
				}
			}
		})
	}()
}

// netns identifies the network namespace of our end of the connection (a
// stream connect creates it in the client's namespace) and returns an fd
// of it, or noFD when it is the daemon's own (or unknown: an unprivileged
// daemon cannot look, and serves its own namespace only).
func (c *conn) netns() (uint64, int) {
	nsfd, err := unix.IoctlRetInt(c.fd, unix.SIOCGSKNS)
	if err != nil {
		return 0, noFD
	}
	self, err := ownNetNS()
	id, ferr := fdID(nsfd)
	if err != nil || ferr != nil || id == self {
		unix.Close(nsfd)
		return 0, noFD
	}
	return id.ino, nsfd
}

// sock_diag constants for AF_UNIX (linux/unix_diag.h).
const (
	sockDiagByFamily = 20
	udiagShowPeer    = 0x4
	unixDiagPeer     = 2
)

// unixPeers maps the inode of every connected unix socket of a network
// namespace (nsfd, or ours if noFD) to its peer's inode.
func unixPeers(nsfd int) (map[uint64]uint32, error) {
	var cfg *netlink.Config
	if nsfd != noFD {
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
