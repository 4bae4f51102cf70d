// Package wire is the genid socket protocol: fixed 16-byte frame headers,
// little-endian fields and small fixed payloads, so that a C client fits in a
// few hundred lines. PROTOCOL.md at the top of the repository is the normative
// description; this package is its Go encoding.
package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// Version is the protocol version carried in every frame header.
const Version = 1

// HeaderSize is the size of every frame header in bytes.
const HeaderSize = 16

// DefaultMaxPayload is the largest request payload a daemon accepts unless
// configured otherwise. Requests are small; only status replies are large.
const DefaultMaxPayload = 4096

// MaxReplyPayload bounds the replies a client accepts (status of many watchers).
const MaxReplyPayload = 64 << 20

// MaxReason is the longest bump reason, in bytes.
const MaxReason = 256

// Op identifies a request, its reply (same op), or a server event.
type Op uint8

// Requests. A reply carries the op and id of its request.
const (
	OpGet          Op = 1 // -> u32 generation
	OpWatch        Op = 2 // register as watcher, acked = current -> u32 generation
	OpAck          Op = 3 // u32 generation -> empty
	OpOutdated     Op = 4 // -> u32 outdated watchers
	OpWaitWatchers Op = 5 // u32 timeout ms (0 = forever) -> empty
	OpBump         Op = 6 // u32 min, u32 flags, reason bytes -> u32 generation
	OpStatus       Op = 7 // -> JSON document
	OpAttach       Op = 8 // u32 flags, u32 acked -> u32 generation
	OpQueryPeer    Op = 9 // u64 client socket inode -> u32 flags, u32 acked

	// Requests of the admin socket only. Every request there begins with
	// a scope's name (Name), the host scope's being empty.
	OpScopeCreate Op = 10 // u32 flags, u32 start, u32 pid -> u32 generation
	OpScopeRemove Op = 11 // -> empty
	OpScopes      Op = 12 // -> JSON list of scopes
	OpRestore     Op = 13 // u32 flags, u32 avoid, u32 pid -> u32 generation, Name
	OpHistory     Op = 14 // u32 flags, u32 max -> JSON list of the last bumps
	OpMetrics     Op = 15 // -> the metrics, Prometheus text exposition format

	// OpEvent is sent by the daemon unprompted (id 0): u32 generation, u32 flags.
	OpEvent Op = 0x80
	// OpRefused is sent by the daemon unprompted (id 0) to a connection
	// it refuses at connect (a limit, a scope being removed), just before
	// it closes the connection: the status says why, the payload in words.
	OpRefused Op = 0x81
)

// String names an op for logs and errors.
func (o Op) String() string {
	switch o {
	case OpGet:
		return "get"
	case OpWatch:
		return "watch"
	case OpAck:
		return "ack"
	case OpOutdated:
		return "outdated"
	case OpWaitWatchers:
		return "wait-watchers"
	case OpBump:
		return "bump"
	case OpStatus:
		return "status"
	case OpAttach:
		return "attach"
	case OpQueryPeer:
		return "query-peer"
	case OpScopeCreate:
		return "scope-create"
	case OpScopeRemove:
		return "scope-remove"
	case OpScopes:
		return "scopes"
	case OpRestore:
		return "restore"
	case OpHistory:
		return "history"
	case OpMetrics:
		return "metrics"
	case OpEvent:
		return "event"
	case OpRefused:
		return "refused"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Flags of OpAttach, OpQueryPeer replies, OpEvent and OpAck.
const (
	// FlagWatcher: the connection is (to be) a watcher.
	FlagWatcher uint32 = 1 << 0
	// FlagRestored: the connection replaces one that was checkpointed; any
	// request the client had in flight was lost and must be sent again.
	FlagRestored uint32 = 1 << 1
	// FlagQuiet (ack): no reply when the ack succeeds; a refusal is still
	// answered. A watcher loop needs no reply: the only refusal an ack of
	// an event's generation can get is stale, and then the event of the
	// newer generation is on its way.
	FlagQuiet uint32 = 1 << 2
)

// Flags of the admin socket's requests.
const (
	// FlagAllScopes (bump): bump every scope, each by one at least (what a
	// VM restore does); the name must be empty.
	FlagAllScopes uint32 = 1 << 0

	// FlagStart (scope-create): start at the given generation, not at 0.
	FlagStart uint32 = 1 << 0
	// FlagExistOK (scope-create): a scope of that name is no error; its
	// generation is returned.
	FlagExistOK uint32 = 1 << 1

	// FlagAvoid (restore): the result must be greater than avoid.
	FlagAvoid uint32 = 1 << 0
	// FlagBegin (restore): only open the restore on this connection (an
	// administrator's request), for later restore requests of it, which
	// then need none; no scope is named or bumped.
	FlagBegin uint32 = 1 << 1

	// FlagEveryScope (history): the bumps of every scope, not only the
	// named one's; the name must be empty.
	FlagEveryScope uint32 = 1 << 0
)

// Status is the result code of a reply. Zero is success; the payload of a
// non-zero reply is a UTF-8 message.
type Status uint16

// Result codes, stable across versions.
const (
	StatusOK          Status = 0
	StatusBadRequest  Status = 1  // malformed frame or payload
	StatusUnknownOp   Status = 2  // op not known to this daemon
	StatusStale       Status = 3  // ack of a generation that is not the current one
	StatusPermission  Status = 4  // caller lacks CAP_CHECKPOINT_RESTORE/CAP_SYS_ADMIN
	StatusTimeout     Status = 5  // wait-watchers timed out
	StatusInterrupted Status = 6  // wait-watchers: the caller itself is outdated
	StatusOverflow    Status = 7  // the generation cannot grow any further
	StatusLimit       Status = 8  // a daemon limit (watchers, pending waits) was reached
	StatusVersion     Status = 9  // unsupported protocol version
	StatusNotWatcher  Status = 10 // the op needs a watcher connection
	StatusNotFound    Status = 11 // query-peer: no such connection
	StatusInternal    Status = 12 // the daemon failed; see its log
	StatusExists      Status = 13 // scope-create: the scope exists already
)

// String is the short name of a status.
func (s Status) String() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusBadRequest:
		return "bad request"
	case StatusUnknownOp:
		return "unknown op"
	case StatusStale:
		return "stale generation"
	case StatusPermission:
		return "permission denied"
	case StatusTimeout:
		return "timeout"
	case StatusInterrupted:
		return "interrupted"
	case StatusOverflow:
		return "generation overflow"
	case StatusLimit:
		return "limit reached"
	case StatusVersion:
		return "unsupported version"
	case StatusNotWatcher:
		return "not a watcher"
	case StatusNotFound:
		return "not found"
	case StatusInternal:
		return "internal error"
	case StatusExists:
		return "exists"
	}
	return fmt.Sprintf("status(%d)", uint16(s))
}

// Header is the fixed part of every frame.
//
//	offset size field
//	0      1    version (1)
//	1      1    op
//	2      2    status (0 in requests and events)
//	4      4    id (chosen by the client, echoed in the reply; 0 in events)
//	8      4    payload length
//	12     4    reserved, must be 0
type Header struct {
	Op     Op
	Status Status
	ID     uint32
	Len    uint32
}

// Errors of the decoder. A daemon answers them with StatusBadRequest or
// StatusVersion and closes the connection, since the stream cannot be resynced.
var (
	ErrVersion  = errors.New("wire: unsupported protocol version")
	ErrReserved = errors.New("wire: reserved header field is not zero")
	ErrTooLarge = errors.New("wire: frame payload too large")
	ErrShort    = errors.New("wire: payload has the wrong size")
)

// PutHeader encodes h into b[:HeaderSize].
func PutHeader(b []byte, h Header) {
	_ = b[HeaderSize-1]
	b[0] = Version
	b[1] = byte(h.Op)
	binary.LittleEndian.PutUint16(b[2:], uint16(h.Status))
	binary.LittleEndian.PutUint32(b[4:], h.ID)
	binary.LittleEndian.PutUint32(b[8:], h.Len)
	binary.LittleEndian.PutUint32(b[12:], 0)
}

// ParseHeader decodes a header and checks it against maxPayload.
func ParseHeader(b []byte, maxPayload uint32) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, io.ErrUnexpectedEOF
	}
	h := Header{
		Op:     Op(b[1]),
		Status: Status(binary.LittleEndian.Uint16(b[2:])),
		ID:     binary.LittleEndian.Uint32(b[4:]),
		Len:    binary.LittleEndian.Uint32(b[8:]),
	}
	if b[0] != Version {
		return h, fmt.Errorf("%w %d", ErrVersion, b[0])
	}
	if binary.LittleEndian.Uint32(b[12:]) != 0 {
		return h, ErrReserved
	}
	if h.Len > maxPayload {
		return h, fmt.Errorf("%w: %d > %d bytes", ErrTooLarge, h.Len, maxPayload)
	}
	return h, nil
}

// Frame is a decoded header and its payload.
type Frame struct {
	Header
	Payload []byte
}

// Append encodes a frame onto b.
func Append(b []byte, h Header, payload []byte) []byte {
	h.Len = uint32(len(payload))
	var hdr [HeaderSize]byte
	PutHeader(hdr[:], h)
	b = append(b, hdr[:]...)
	return append(b, payload...)
}

// Decode parses one complete frame from the front of b. It returns the frame,
// the bytes it used, and io.ErrUnexpectedEOF when b holds only part of a
// frame. The payload aliases b.
func Decode(b []byte, maxPayload uint32) (Frame, int, error) {
	h, err := ParseHeader(b, maxPayload)
	if err != nil {
		return Frame{}, 0, err
	}
	end := HeaderSize + int(h.Len)
	if len(b) < end {
		return Frame{}, 0, io.ErrUnexpectedEOF
	}
	return Frame{Header: h, Payload: b[HeaderSize:end]}, end, nil
}

// ReadFrame reads one frame from r. The payload is freshly allocated.
func ReadFrame(r io.Reader, maxPayload uint32) (Frame, error) {
	var hdr [HeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Frame{}, err
	}
	h, err := ParseHeader(hdr[:], maxPayload)
	if err != nil {
		return Frame{}, err
	}
	f := Frame{Header: h}
	if h.Len > 0 {
		f.Payload = make([]byte, h.Len)
		if _, err := io.ReadFull(r, f.Payload); err != nil {
			return Frame{}, err
		}
	}
	return f, nil
}

// U32 encodes one little-endian u32 payload.
func U32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }

// U32s encodes consecutive little-endian u32 fields.
func U32s(vs ...uint32) []byte {
	b := make([]byte, 0, 4*len(vs))
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint32(b, v)
	}
	return b
}

// ParseU32 decodes a payload of exactly one u32.
func ParseU32(p []byte) (uint32, error) {
	if len(p) != 4 {
		return 0, fmt.Errorf("%w: %d bytes, want 4", ErrShort, len(p))
	}
	return binary.LittleEndian.Uint32(p), nil
}

// Pair is the payload of OpAttach requests, OpQueryPeer replies and events:
// flags (or generation) first, then a u32.
type Pair struct{ A, B uint32 }

// ParsePair decodes a payload of exactly two u32s.
func ParsePair(p []byte) (Pair, error) {
	if len(p) != 8 {
		return Pair{}, fmt.Errorf("%w: %d bytes, want 8", ErrShort, len(p))
	}
	return Pair{binary.LittleEndian.Uint32(p), binary.LittleEndian.Uint32(p[4:])}, nil
}

// Bump is the payload of OpBump (after the scope's name, on the admin socket).
type Bump struct {
	Min    uint32 // the result is max(current+1, Min)
	Flags  uint32 // FlagAllScopes
	Reason string // at most MaxReason bytes
}

// Encode returns the payload of b.
func (b Bump) Encode() []byte {
	p := U32s(b.Min, b.Flags)
	return append(p, b.Reason...)
}

// ParseBump decodes an OpBump payload.
func ParseBump(p []byte) (Bump, error) {
	if len(p) < 8 {
		return Bump{}, fmt.Errorf("%w: %d bytes, want at least 8", ErrShort, len(p))
	}
	b := Bump{Min: binary.LittleEndian.Uint32(p), Flags: binary.LittleEndian.Uint32(p[4:])}
	if b.Flags&^FlagAllScopes != 0 {
		return Bump{}, fmt.Errorf("wire: unknown bump flags %#x", b.Flags)
	}
	r := p[8:]
	if len(r) > MaxReason {
		return Bump{}, fmt.Errorf("wire: bump reason of %d bytes exceeds %d", len(r), MaxReason)
	}
	for _, c := range r {
		if c < 0x20 || c == 0x7f {
			return Bump{}, errors.New("wire: bump reason holds control characters")
		}
	}
	b.Reason = string(r)
	return b, nil
}

// Ack is the payload of OpAck: the generation, then optional flags (a
// 4-byte payload has none).
type Ack struct {
	Gen   uint32
	Flags uint32 // FlagQuiet
}

// Encode returns the payload of a: 4 bytes without flags, else 8.
func (a Ack) Encode() []byte {
	if a.Flags == 0 {
		return U32(a.Gen)
	}
	return U32s(a.Gen, a.Flags)
}

// ParseAck decodes an OpAck payload of 4 or 8 bytes.
func ParseAck(p []byte) (Ack, error) {
	switch len(p) {
	case 4:
		return Ack{Gen: binary.LittleEndian.Uint32(p)}, nil
	case 8:
		a := Ack{Gen: binary.LittleEndian.Uint32(p), Flags: binary.LittleEndian.Uint32(p[4:])}
		if a.Flags&^FlagQuiet != 0 {
			return Ack{}, fmt.Errorf("wire: unknown ack flags %#x", a.Flags)
		}
		return a, nil
	}
	return Ack{}, fmt.Errorf("%w: %d bytes, want 4 or 8", ErrShort, len(p))
}

// ParseInode decodes the u64 payload of OpQueryPeer.
func ParseInode(p []byte) (uint64, error) {
	if len(p) != 8 {
		return 0, fmt.Errorf("%w: %d bytes, want 8", ErrShort, len(p))
	}
	return binary.LittleEndian.Uint64(p), nil
}

// MaxName is the longest scope name, in bytes (a podman container id is 64
// hex digits; a socket path must fit sun_path).
const MaxName = 64

// CheckName checks a scope's name: 1 to MaxName bytes of letters, digits,
// '_', '.' and '-', not starting with '.' or '-' (so never "." or "..", and
// never an option). The host scope's name is empty and is not checked here.
func CheckName(name string) error {
	if name == "" || len(name) > MaxName {
		return fmt.Errorf("wire: scope name of %d bytes: want 1 to %d", len(name), MaxName)
	}
	if name[0] == '.' || name[0] == '-' {
		return fmt.Errorf("wire: scope name %q starts with %q", name, name[0])
	}
	for _, c := range []byte(name) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '.' || c == '-') {
			return fmt.Errorf("wire: scope name %q: only letters, digits, '_', '.' and '-'", name)
		}
	}
	return nil
}

// AppendName encodes a scope's name: a u8 length, then the bytes.
func AppendName(b []byte, name string) []byte {
	return append(append(b, byte(len(name))), name...)
}

// ParseName decodes the scope's name at the front of p (the host scope's is
// empty) and returns the rest of p.
func ParseName(p []byte) (string, []byte, error) {
	if len(p) < 1 || len(p) < 1+int(p[0]) {
		return "", nil, fmt.Errorf("%w: no scope name", ErrShort)
	}
	name := string(p[1 : 1+int(p[0])]) // int: 1+255 would wrap as a byte
	if name != "" {
		if err := CheckName(name); err != nil {
			return "", nil, err
		}
	}
	return name, p[1+len(name):], nil
}

// ScopeCreate is the payload of OpScopeCreate, after the name.
type ScopeCreate struct {
	Flags uint32 // FlagStart, FlagExistOK
	Start uint32 // the first generation, with FlagStart
	PID   uint32 // if not 0, the scope goes when this process ends
}

// Encode returns the payload of c.
func (c ScopeCreate) Encode() []byte { return U32s(c.Flags, c.Start, c.PID) }

// ParseScopeCreate decodes what follows the name of an OpScopeCreate.
func ParseScopeCreate(p []byte) (ScopeCreate, error) {
	if len(p) != 12 {
		return ScopeCreate{}, fmt.Errorf("%w: %d bytes, want 12", ErrShort, len(p))
	}
	c := ScopeCreate{binary.LittleEndian.Uint32(p), binary.LittleEndian.Uint32(p[4:]), binary.LittleEndian.Uint32(p[8:])}
	if c.Flags&^(FlagStart|FlagExistOK) != 0 {
		return ScopeCreate{}, fmt.Errorf("wire: unknown scope-create flags %#x", c.Flags)
	}
	return c, nil
}

// Restore is the payload of OpRestore, after the name (the scope the
// checkpoint recorded: a hint for the name of a new one).
type Restore struct {
	Flags uint32 // FlagAvoid
	Avoid uint32 // the generation the checkpoint recorded
	PID   uint32 // the restored tasks' root, as the daemon sees it; 0 for none
	// ImagesDir is where the checkpoint's images are, for the history; ""
	// for none. At most MaxImagesDir bytes.
	ImagesDir string
}

// MaxImagesDir bounds a restore's images dir, so that the request fits the
// smallest frame a daemon takes (a longer path is sent by its end).
const MaxImagesDir = MaxReason - 8

// Encode returns the payload of r: three u32, then, if it names its images
// dir, the dir's length (u16) and the dir.
func (r Restore) Encode() []byte {
	b := U32s(r.Flags, r.Avoid, r.PID)
	if r.ImagesDir != "" {
		b = binary.LittleEndian.AppendUint16(b, uint16(len(r.ImagesDir)))
		b = append(b, r.ImagesDir...)
	}
	return b
}

// ParseRestore decodes what follows the name of an OpRestore.
func ParseRestore(p []byte) (Restore, error) {
	if len(p) < 12 {
		return Restore{}, fmt.Errorf("%w: %d bytes, want 12", ErrShort, len(p))
	}
	r := Restore{Flags: binary.LittleEndian.Uint32(p), Avoid: binary.LittleEndian.Uint32(p[4:]), PID: binary.LittleEndian.Uint32(p[8:])}
	if r.Flags&^(FlagAvoid|FlagBegin) != 0 {
		return Restore{}, fmt.Errorf("wire: unknown restore flags %#x", r.Flags)
	}
	if dir := p[12:]; len(dir) > 0 {
		if len(dir) < 2 || int(binary.LittleEndian.Uint16(dir)) != len(dir)-2 {
			return Restore{}, fmt.Errorf("%w: restore: the images dir's length is not what follows it", ErrShort)
		}
		dir = dir[2:]
		if len(dir) == 0 || len(dir) > MaxImagesDir || bytes.IndexByte(dir, 0) >= 0 || !utf8.Valid(dir) {
			return Restore{}, fmt.Errorf("wire: restore: images dir of %d bytes: empty, over %d, or not text", len(dir), MaxImagesDir)
		}
		r.ImagesDir = string(dir)
	}
	return r, nil
}

// History is the payload of OpHistory, after the name.
type History struct {
	Flags uint32 // FlagEveryScope
	Max   uint32 // the latest Max bumps; 0 for every one kept
}

// Encode returns the payload of h.
func (h History) Encode() []byte { return U32s(h.Flags, h.Max) }

// ParseHistory decodes what follows the name of an OpHistory.
func ParseHistory(p []byte) (History, error) {
	pr, err := ParsePair(p)
	if err != nil {
		return History{}, err
	}
	if pr.A&^FlagEveryScope != 0 {
		return History{}, fmt.Errorf("wire: unknown history flags %#x", pr.A)
	}
	return History{Flags: pr.A, Max: pr.B}, nil
}
