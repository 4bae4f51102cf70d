package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
)

// The decoder's edges, each tried on both sides: what PROTOCOL.md allows is
// accepted, one step past it is refused with an error.

func TestHeaderPayloadLimit(t *testing.T) {
	const max = 64
	at := Append(nil, Header{Op: OpBump, ID: 1}, make([]byte, max))
	f, n, err := Decode(at, max)
	if err != nil || n != len(at) || len(f.Payload) != max {
		t.Fatalf("payload of exactly the limit: %v, used %d of %d", err, n, len(at))
	}
	if _, err := ReadFrame(bytes.NewReader(at), max); err != nil {
		t.Fatalf("ReadFrame, payload of exactly the limit: %v", err)
	}
	over := Append(nil, Header{Op: OpBump, ID: 1}, make([]byte, max+1))
	if _, n, err := Decode(over, max); !errors.Is(err, ErrTooLarge) || n != 0 {
		t.Fatalf("one byte over the limit: %v, used %d", err, n)
	}
	if _, err := ReadFrame(bytes.NewReader(over), max); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("ReadFrame, one byte over the limit: %v", err)
	}
	// A header alone, or a payload cut short, is a frame in part.
	if _, n, err := Decode(at[:len(at)-1], max); !errors.Is(err, io.ErrUnexpectedEOF) || n != 0 {
		t.Fatalf("payload cut short: %v, used %d", err, n)
	}
	if _, err := ReadFrame(bytes.NewReader(at[:len(at)-1]), max); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("ReadFrame, payload cut short: %v", err)
	}
	if _, err := ParseHeader(at[:HeaderSize-1], max); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("15-byte header: %v", err)
	}
}

// TestPayloadSizes: each fixed payload is taken at its size only.
func TestPayloadSizes(t *testing.T) {
	parsers := []struct {
		name  string
		sizes []int
		parse func([]byte) error
	}{
		{"u32", []int{4}, func(p []byte) error { _, err := ParseU32(p); return err }},
		{"pair", []int{8}, func(p []byte) error { _, err := ParsePair(p); return err }},
		{"inode", []int{8}, func(p []byte) error { _, err := ParseInode(p); return err }},
		{"ack", []int{4, 8}, func(p []byte) error { _, err := ParseAck(p); return err }},
		{"scope-create", []int{12}, func(p []byte) error { _, err := ParseScopeCreate(p); return err }},
		{"history", []int{8}, func(p []byte) error { _, err := ParseHistory(p); return err }},
	}
	for _, pr := range parsers {
		for n := 0; n <= 16; n++ {
			err := pr.parse(make([]byte, n))
			want := slices.Contains(pr.sizes, n)
			switch {
			case want && err != nil:
				t.Errorf("%s of %d bytes refused: %v", pr.name, n, err)
			case !want && !errors.Is(err, ErrShort):
				t.Errorf("%s of %d bytes: %v, want ErrShort", pr.name, n, err)
			}
		}
	}
	// Bump and restore: fixed fields, then what may follow them.
	for n := 0; n < 8; n++ {
		if _, err := ParseBump(make([]byte, n)); !errors.Is(err, ErrShort) {
			t.Errorf("bump of %d bytes: %v, want ErrShort", n, err)
		}
	}
	for n := 0; n < 12; n++ {
		if _, err := ParseRestore(make([]byte, n)); !errors.Is(err, ErrShort) {
			t.Errorf("restore of %d bytes: %v, want ErrShort", n, err)
		}
	}
	if r, err := ParseRestore(U32s(FlagAvoid, 7, 42)); err != nil || r.Flags != FlagAvoid || r.Avoid != 7 || r.PID != 42 {
		t.Errorf("restore of 12 bytes: %+v %v", r, err)
	}
	if b, err := ParseBump(U32s(7, FlagAllScopes)); err != nil || b != (Bump{Min: 7, Flags: FlagAllScopes}) {
		t.Errorf("bump without a reason: %+v %v", b, err)
	}
}

// TestFlagsRefused: every flag bit a request does not define is refused.
func TestFlagsRefused(t *testing.T) {
	parsers := []struct {
		name  string
		known uint32
		parse func(flags uint32) error
	}{
		{"bump", FlagAllScopes, func(f uint32) error { _, err := ParseBump(U32s(1, f)); return err }},
		{"ack", FlagQuiet, func(f uint32) error { _, err := ParseAck(U32s(1, f)); return err }},
		{"scope-create", FlagStart | FlagExistOK, func(f uint32) error { _, err := ParseScopeCreate(U32s(f, 1, 1)); return err }},
		{"restore", FlagAvoid | FlagBegin, func(f uint32) error { _, err := ParseRestore(U32s(f, 1, 1)); return err }},
		{"history", FlagEveryScope, func(f uint32) error { _, err := ParseHistory(U32s(f, 1)); return err }},
	}
	for _, pr := range parsers {
		if err := pr.parse(pr.known); err != nil {
			t.Errorf("%s with its flags %#x: %v", pr.name, pr.known, err)
		}
		for bit := range 32 {
			f := uint32(1) << bit
			if err := pr.parse(f); (err == nil) != (f&pr.known != 0) {
				t.Errorf("%s with flag %#x: %v", pr.name, f, err)
			}
		}
	}
}

// TestFieldsInOrder: the fixed payloads decode each field from its offset.
func TestFieldsInOrder(t *testing.T) {
	if c, err := ParseScopeCreate(U32s(FlagStart, 5, 9)); err != nil || c != (ScopeCreate{Flags: FlagStart, Start: 5, PID: 9}) {
		t.Errorf("scope-create: %+v %v", c, err)
	}
	if r, err := ParseRestore(U32s(FlagAvoid, 5, 9)); err != nil || r != (Restore{Flags: FlagAvoid, Avoid: 5, PID: 9}) {
		t.Errorf("restore: %+v %v", r, err)
	}
	if p, err := ParsePair(U32s(3, 4)); err != nil || p != (Pair{3, 4}) {
		t.Errorf("pair: %+v %v", p, err)
	}
	ino := binary.LittleEndian.AppendUint64(nil, 0x0102030405060708)
	if v, err := ParseInode(ino); err != nil || v != 0x0102030405060708 {
		t.Errorf("inode: %#x %v", v, err)
	}
	if v, err := ParseU32(U32(0xdeadbeef)); err != nil || v != 0xdeadbeef {
		t.Errorf("u32: %#x %v", v, err)
	}
}

// TestBumpReason: up to MaxReason bytes, none of them a control character
// (bytes 0 to 31 and 127); UTF-8 is taken.
func TestBumpReason(t *testing.T) {
	long := strings.Repeat("r", MaxReason)
	if b, err := ParseBump(Bump{Min: 1, Reason: long}.Encode()); err != nil || b.Reason != long {
		t.Errorf("reason of MaxReason bytes: %v", err)
	}
	if _, err := ParseBump(Bump{Min: 1, Reason: long + "r"}.Encode()); err == nil {
		t.Error("reason of MaxReason+1 bytes taken")
	}
	for c := range 256 {
		reason := "a" + string([]byte{byte(c)}) + "b"
		b, err := ParseBump(Bump{Reason: reason}.Encode())
		if control := c < 0x20 || c == 0x7f; control != (err != nil) {
			t.Errorf("reason with byte %#x: %v", c, err)
		} else if err == nil && b.Reason != reason {
			t.Errorf("reason with byte %#x: got %q", c, b.Reason)
		}
	}
}

// nameBytes are the bytes a scope's name may hold (PROTOCOL.md, "On the
// admin socket").
const nameBytes = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"

func TestCheckName(t *testing.T) {
	for c := range 256 {
		allowed := strings.IndexByte(nameBytes, byte(c)) >= 0
		inside := "x" + string([]byte{byte(c)}) + "y"
		if err := CheckName(inside); (err == nil) != allowed {
			t.Errorf("name %q: %v", inside, err)
		}
		first := string([]byte{byte(c)}) + "y"
		if err := CheckName(first); (err == nil) != (allowed && c != '.' && c != '-') {
			t.Errorf("name %q: %v", first, err)
		}
	}
	for _, name := range []string{".", "..", "-", "-rf", ""} {
		if CheckName(name) == nil {
			t.Errorf("name %q taken", name)
		}
	}
	if err := CheckName(strings.Repeat("n", MaxName)); err != nil {
		t.Errorf("name of MaxName bytes: %v", err)
	}
	if CheckName(strings.Repeat("n", MaxName+1)) == nil {
		t.Error("name of MaxName+1 bytes taken")
	}
}

func TestParseName(t *testing.T) {
	for _, tc := range []struct {
		name, rest string
	}{
		{"", ""}, {"", "rest"}, {"c", ""}, {"c", "rest"},
		{strings.Repeat("n", MaxName), "\x00\x01"},
	} {
		p := append(AppendName(nil, tc.name), tc.rest...)
		name, rest, err := ParseName(p)
		if err != nil || name != tc.name || string(rest) != tc.rest {
			t.Errorf("%q+%q: got %q+%q, %v", tc.name, tc.rest, name, rest, err)
		}
	}
	for _, p := range [][]byte{
		nil,
		{1},            // a length and no name
		{3, 'a', 'b'},  // a length past the end
		{0xff, 'a'},    // the longest length, past the end
		{2, '.', 'x'},  // a name CheckName refuses
		{1, '/', 0, 0}, // a byte no name may hold
		append([]byte{MaxName + 1}, strings.Repeat("n", MaxName+1)...),
	} {
		if name, rest, err := ParseName(p); !(err != nil && name == "" && rest == nil) {
			t.Errorf("%q: got %q+%q, %v", p, name, rest, err)
		}
	}
}

// TestEncodings: what a client sends is what the daemon decodes.
func TestEncodings(t *testing.T) {
	if got := U32s(1, 2, 3); !bytes.Equal(got, []byte{1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0}) {
		t.Errorf("U32s: %x", got)
	}
	if got := U32s(); len(got) != 0 {
		t.Errorf("U32s(): %x", got)
	}
	c := ScopeCreate{Flags: FlagStart | FlagExistOK, Start: 7, PID: 42}
	if got, err := ParseScopeCreate(c.Encode()); err != nil || got != c {
		t.Errorf("scope-create: %+v %v", got, err)
	}
	r := Restore{Flags: FlagAvoid, Avoid: 8, PID: 43}
	if got, err := ParseRestore(r.Encode()); err != nil || got != r {
		t.Errorf("restore: %+v %v", got, err)
	}
	var hdr [HeaderSize]byte
	PutHeader(hdr[:], Header{Op: OpEvent, Status: StatusStale, ID: 9, Len: 4})
	h, err := ParseHeader(hdr[:], 4)
	if err != nil || h != (Header{Op: OpEvent, Status: StatusStale, ID: 9, Len: 4}) {
		t.Errorf("header: %+v %v", h, err)
	}
}
