package main

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/godbus/dbus/v5"
	"golang.org/x/sys/unix"
)

// busConfig is a private bus: EXTERNAL auth on a unix socket, everything
// allowed, limits high enough for 10 000 subscribers.
const busConfig = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>genid-bench</type>
  <listen>unix:path=%s</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
  <limit name="max_incoming_bytes">1000000000</limit>
  <limit name="max_outgoing_bytes">1000000000</limit>
  <limit name="max_message_size">1000000000</limit>
  <limit name="max_incomplete_connections">100000</limit>
  <limit name="max_completed_connections">100000</limit>
  <limit name="max_connections_per_user">100000</limit>
  <limit name="max_match_rules_per_connection">50000</limit>
  <limit name="max_replies_per_connection">50000</limit>
  <limit name="max_names_per_connection">50000</limit>
  <limit name="auth_timeout">240000</limit>
</busconfig>
`

const (
	busIface  = "org.genid.Bench"
	busMember = "Generation"
	busPath   = dbus.ObjectPath("/org/genid/Bench")
)

// bus is a private dbus-daemon (Debian's package).
type bus struct {
	cmd  *exec.Cmd
	dir  string
	sock string
	log  bytes.Buffer
}

func startBus() (*bus, error) {
	if _, err := exec.LookPath("dbus-daemon"); err != nil {
		return nil, fmt.Errorf("dbus-daemon not installed (apt-get install dbus-daemon): %w", err)
	}
	dir, err := os.MkdirTemp("", "genid-bench-bus-")
	if err != nil {
		return nil, err
	}
	b := &bus{dir: dir, sock: filepath.Join(dir, "bus")}
	conf := filepath.Join(dir, "bus.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, busConfig, b.sock), 0o644); err != nil {
		return nil, err
	}
	b.cmd = exec.Command("dbus-daemon", "--config-file="+conf, "--nofork", "--nopidfile", "--nosyslog")
	b.cmd.Stdout, b.cmd.Stderr = &b.log, &b.log
	if err := b.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(b.sock); err == nil {
			return b, nil
		}
		if time.Now().After(deadline) {
			b.stop()
			return nil, fmt.Errorf("dbus-daemon did not start: %s", b.log.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (b *bus) stop() {
	b.cmd.Process.Signal(syscall.SIGTERM)
	waitBounded(b.cmd, 10*time.Second)
	os.RemoveAll(b.dir)
}

func (b *bus) address() string { return "unix:path=" + b.sock }

// fdReader reads a raw fd without buffering, so that decoding a message
// takes no byte of the next one.
type fdReader int

func (r fdReader) Read(p []byte) (int, error) {
	for {
		n, err := unix.Read(int(r), p)
		if err == unix.EINTR {
			continue
		}
		if err == nil && n == 0 {
			return 0, fmt.Errorf("EOF")
		}
		return n, err
	}
}

// busCall encodes a method call to the bus driver with the given serial.
func busCall(serial uint32, member string, args ...any) ([]byte, error) {
	m := &dbus.Message{
		Type: dbus.TypeMethodCall,
		Headers: map[dbus.HeaderField]dbus.Variant{
			dbus.FieldPath:        dbus.MakeVariant(dbus.ObjectPath("/org/freedesktop/DBus")),
			dbus.FieldDestination: dbus.MakeVariant("org.freedesktop.DBus"),
			dbus.FieldInterface:   dbus.MakeVariant("org.freedesktop.DBus"),
			dbus.FieldMember:      dbus.MakeVariant(member),
		},
		Body: args,
	}
	if len(args) > 0 {
		m.Headers[dbus.FieldSignature] = dbus.MakeVariant(dbus.SignatureOf(args...))
	}
	var buf bytes.Buffer
	if err := m.EncodeTo(&buf, binary.LittleEndian); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	binary.LittleEndian.PutUint32(b[8:], serial) // godbus keeps the serial to itself
	return b, nil
}

// subscribe connects one subscriber on a raw, blocking socket: EXTERNAL
// auth, Hello, AddMatch for the bench signal. The next message on the fd is
// the signal.
func (b *bus) subscribe() (int, error) {
	fd, err := dialRaw(b.sock)
	if err != nil {
		return -1, err
	}
	fail := func(err error) (int, error) {
		unix.Close(fd)
		return -1, err
	}
	uid := hex.EncodeToString([]byte(strconv.Itoa(os.Getuid())))
	if err := writeAll(fd, []byte("\x00AUTH EXTERNAL "+uid+"\r\n")); err != nil {
		return fail(err)
	}
	var line []byte
	for !bytes.HasSuffix(line, []byte("\r\n")) {
		var c [1]byte
		if err := readFull(fd, c[:]); err != nil {
			return fail(err)
		}
		line = append(line, c[0])
	}
	if !strings.HasPrefix(string(line), "OK ") {
		return fail(fmt.Errorf("dbus auth: %q", line))
	}
	hello, err := busCall(1, "Hello")
	if err != nil {
		return fail(err)
	}
	match, err := busCall(2, "AddMatch", fmt.Sprintf("type='signal',interface='%s',member='%s'", busIface, busMember))
	if err != nil {
		return fail(err)
	}
	if err := writeAll(fd, append(append([]byte("BEGIN\r\n"), hello...), match...)); err != nil {
		return fail(err)
	}
	// Hello's reply, NameAcquired, AddMatch's reply: the bus sends them in
	// this order.
	for {
		m, err := dbus.DecodeMessage(fdReader(fd))
		if err != nil {
			return fail(fmt.Errorf("dbus setup: %w", err))
		}
		if m.Type == dbus.TypeError {
			return fail(fmt.Errorf("dbus setup: %v", m.Body))
		}
		if rs, ok := m.Headers[dbus.FieldReplySerial]; ok && m.Type == dbus.TypeMethodReply && rs.Value() == uint32(2) {
			if err := bound(fd, 0); err != nil { // the helper blocks on it
				return fail(err)
			}
			return fd, nil
		}
	}
}

// fanoutDBus: N subscribers of one signal through a private dbus-daemon;
// the writer emits it with godbus.
func fanoutDBus(b *bench, n int) (*arena, error) {
	bs, err := startBus()
	if err != nil {
		return nil, err
	}
	fds := make([]int, 0, n)
	for range n {
		fd, err := bs.subscribe()
		if err != nil {
			closeAll(fds)
			bs.stop()
			return nil, fmt.Errorf("subscriber %d: %w", len(fds), err)
		}
		fds = append(fds, fd)
	}
	emitter, err := dbus.Connect(bs.address())
	if err != nil {
		closeAll(fds)
		bs.stop()
		return nil, err
	}
	h, err := startHelper(b.waiters, "raw", n, fds)
	if err != nil {
		emitter.Close()
		bs.stop()
		return nil, err
	}
	gen := uint32(0)
	return &arena{
		h: h,
		round: func() (int64, error) {
			gen++
			t0 := mono()
			if err := emitter.Emit(busPath, busIface+"."+busMember, gen); err != nil {
				return 0, err
			}
			t1, err := h.done()
			return t1 - t0, err
		},
		close: func() {
			emitter.Close()
			bs.stop()
		},
	}, nil
}
