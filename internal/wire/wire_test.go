package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	b := Append(nil, Header{Op: OpBump, ID: 7}, Bump{Min: 9, Reason: "criu-restore"}.Encode())
	f, n, err := Decode(b, DefaultMaxPayload)
	if err != nil || n != len(b) {
		t.Fatalf("decode: %v, used %d of %d", err, n, len(b))
	}
	bp, err := ParseBump(f.Payload)
	if err != nil || f.Op != OpBump || f.ID != 7 || bp.Min != 9 || bp.Reason != "criu-restore" {
		t.Fatalf("got %+v %+v %v", f.Header, bp, err)
	}
	rf, err := ReadFrame(bytes.NewReader(b), DefaultMaxPayload)
	if err != nil || !bytes.Equal(rf.Payload, f.Payload) {
		t.Fatalf("ReadFrame: %v", err)
	}
}

func TestDecodeErrors(t *testing.T) {
	good := Append(nil, Header{Op: OpGet, ID: 1}, nil)
	if _, _, err := Decode(good[:10], 16); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short header: %v", err)
	}
	bad := bytes.Clone(good)
	bad[0] = 2
	if _, _, err := Decode(bad, 16); !errors.Is(err, ErrVersion) {
		t.Errorf("version: %v", err)
	}
	bad = bytes.Clone(good)
	bad[13] = 1
	if _, _, err := Decode(bad, 16); !errors.Is(err, ErrReserved) {
		t.Errorf("reserved: %v", err)
	}
	big := Append(nil, Header{Op: OpBump}, make([]byte, 100))
	if _, _, err := Decode(big, 16); !errors.Is(err, ErrTooLarge) {
		t.Errorf("too large: %v", err)
	}
	if _, err := ParseBump(append(U32s(1, 0), "a\nb"...)); err == nil {
		t.Error("reason with a newline accepted")
	}
	if _, err := ParseBump(append(U32s(1, 0), make([]byte, MaxReason+1)...)); err == nil {
		t.Error("overlong reason accepted")
	}
	if _, err := ParseU32([]byte{1, 2, 3}); !errors.Is(err, ErrShort) {
		t.Errorf("short u32: %v", err)
	}
	if _, err := ParseAck(U32s(1, FlagWatcher)); err == nil {
		t.Error("ack with an unknown flag accepted")
	}
	if _, err := ParseAck(U32s(1, FlagQuiet, 0)); !errors.Is(err, ErrShort) {
		t.Errorf("12-byte ack: %v", err)
	}
}

func TestAck(t *testing.T) {
	for _, a := range []Ack{{Gen: 5}, {Gen: 6, Flags: FlagQuiet}} {
		p := a.Encode()
		if want := map[bool]int{true: 4, false: 8}[a.Flags == 0]; len(p) != want {
			t.Errorf("%+v: %d bytes, want %d", a, len(p), want)
		}
		if got, err := ParseAck(p); err != nil || got != a {
			t.Errorf("%+v: parsed %+v, %v", a, got, err)
		}
	}
	if a, err := ParseAck(U32s(7, 0)); err != nil || a != (Ack{Gen: 7}) {
		t.Errorf("8-byte ack without flags: %+v %v", a, err)
	}
}

// FuzzDecode feeds the decoder and every payload parser the daemon runs on
// a client's bytes (dispatch.go) arbitrary bytes: they must never panic,
// never claim more bytes than given, refuse with an error, and what they
// accept must encode back to the same bytes. A payload is tried both as a
// scope's socket sees it and, after the scope's name, as the admin socket
// does.
func FuzzDecode(f *testing.F) {
	f.Add(Append(nil, Header{Op: OpGet, ID: 1}, nil))
	f.Add(Append(nil, Header{Op: OpAck, ID: 2}, U32(5)))
	f.Add(Append(nil, Header{Op: OpAck, ID: 2}, Ack{Gen: 5, Flags: FlagQuiet}.Encode()))
	f.Add(Append(nil, Header{Op: OpAttach, ID: 3}, U32s(FlagWatcher|FlagRestored, 5)))
	f.Add(Append(nil, Header{Op: OpBump, ID: 4}, Bump{Min: 6, Reason: "criu-restore"}.Encode()))
	f.Add(Append(nil, Header{Op: OpQueryPeer, ID: 5}, []byte{1, 2, 3, 4, 5, 6, 7, 8}))
	f.Add(Append(nil, Header{Op: OpEvent}, U32s(7, FlagRestored)))
	f.Add([]byte{1, 1, 0, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0})
	f.Add([]byte("GET / HTTP/1.0\r\n\r\n"))
	// The admin socket's requests, and their edges.
	admin := func(op Op, name string, p []byte) []byte {
		return Append(nil, Header{Op: op, ID: 6}, append(AppendName(nil, name), p...))
	}
	f.Add(admin(OpBump, "", Bump{Min: 1, Flags: FlagAllScopes, Reason: strings.Repeat("r", MaxReason)}.Encode()))
	f.Add(admin(OpBump, "c1", Bump{Reason: strings.Repeat("r", MaxReason+1)}.Encode()))
	f.Add(admin(OpBump, "c1", Bump{Reason: " ~\x7f"}.Encode()))
	f.Add(admin(OpScopeCreate, strings.Repeat("n", MaxName), ScopeCreate{Flags: FlagStart | FlagExistOK, Start: 5, PID: 42}.Encode()))
	f.Add(admin(OpScopeCreate, "azAZ09_.-", ScopeCreate{Flags: 4}.Encode()))
	f.Add(admin(OpRestore, "c-1", Restore{Flags: FlagAvoid, Avoid: 7, PID: 42}.Encode()))
	f.Add(admin(OpRestore, "", Restore{Flags: FlagBegin}.Encode()))
	f.Add(admin(OpHistory, "", History{Flags: FlagEveryScope, Max: 10}.Encode()))
	f.Add(admin(OpQueryPeer, "", []byte{1, 2, 3, 4, 5, 6, 7, 8}))
	f.Add(admin(OpWaitWatchers, "c", U32(100)))
	f.Add(Append(nil, Header{Op: OpGet, ID: 7}, []byte{5, 'a', 'b'}))
	f.Add(Append(nil, Header{Op: OpGet, ID: 7}, []byte{2, '.', 'a'}))
	f.Add(Append(nil, Header{Op: OpGet, ID: 7}, []byte{3, 'a', '/', 'b'}))
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, n, err := Decode(b, DefaultMaxPayload)
		if err != nil {
			if n != 0 {
				t.Fatalf("error %v but consumed %d", err, n)
			}
			return
		}
		if n > len(b) || n != HeaderSize+len(fr.Payload) {
			t.Fatalf("consumed %d of %d with payload %d", n, len(b), len(fr.Payload))
		}
		again := Append(nil, fr.Header, fr.Payload)
		if !bytes.Equal(again, b[:n]) {
			t.Fatalf("re-encoding differs:\n%x\n%x", again, b[:n])
		}
		if _, err := ReadFrame(bytes.NewReader(b), DefaultMaxPayload); err != nil {
			t.Fatalf("Decode accepted what ReadFrame refused: %v", err)
		}
		checkPayload(t, fr.Payload)
		name, rest, err := ParseName(fr.Payload)
		p := fr.Payload
		valid := len(p) > 0 && len(p) > int(p[0]) && (p[0] == 0 || CheckName(string(p[1:1+int(p[0])])) == nil)
		if (err == nil) != valid {
			t.Fatalf("name of %x: valid %v, but %v", p, valid, err)
		}
		if err != nil {
			return
		}
		if again := append(AppendName(nil, name), rest...); !bytes.Equal(again, p) {
			t.Fatalf("name re-encoding differs: %q + %x from %x", name, rest, p)
		}
		checkPayload(t, rest)
	})
}

// checkPayload runs every payload parser on p: each refuses with an error
// or accepts what it re-encodes to the same bytes.
func checkPayload(t *testing.T, p []byte) {
	t.Helper()
	if v, err := ParseU32(p); err == nil && !bytes.Equal(U32(v), p) {
		t.Fatalf("u32 re-encoding differs: %x from %x", U32(v), p)
	}
	if v, err := ParsePair(p); err == nil && !bytes.Equal(U32s(v.A, v.B), p) {
		t.Fatalf("pair re-encoding differs: %+v from %x", v, p)
	}
	if v, err := ParseInode(p); err == nil && !bytes.Equal(binary.LittleEndian.AppendUint64(nil, v), p) {
		t.Fatalf("inode re-encoding differs: %#x from %x", v, p)
	}
	if a, err := ParseAck(p); err == nil {
		if again, err := ParseAck(a.Encode()); err != nil || again != a {
			t.Fatalf("ack re-encoding differs: %+v %+v %v", a, again, err)
		}
		if len(p) == 4 && !bytes.Equal(a.Encode(), p) {
			t.Fatalf("4-byte ack re-encoding differs: %+v from %x", a, p)
		}
	}
	if v, err := ParseBump(p); err == nil && !bytes.Equal(v.Encode(), p) {
		t.Fatalf("bump re-encoding differs: %+v from %x", v, p)
	}
	if v, err := ParseScopeCreate(p); err == nil && !bytes.Equal(v.Encode(), p) {
		t.Fatalf("scope-create re-encoding differs: %+v from %x", v, p)
	}
	if v, err := ParseRestore(p); err == nil && !bytes.Equal(v.Encode(), p) {
		t.Fatalf("restore re-encoding differs: %+v from %x", v, p)
	}
	if v, err := ParseHistory(p); err == nil && !bytes.Equal(v.Encode(), p) {
		t.Fatalf("history re-encoding differs: %+v from %x", v, p)
	}
}

func TestHistory(t *testing.T) {
	h := History{Flags: FlagEveryScope, Max: 7}
	got, err := ParseHistory(h.Encode())
	if err != nil || got != h {
		t.Fatalf("%+v %v", got, err)
	}
	if _, err := ParseHistory(U32s(2, 0)); err == nil {
		t.Error("unknown flags taken")
	}
	if _, err := ParseHistory(U32(0)); err == nil {
		t.Error("a short payload taken")
	}
	if OpHistory.String() != "history" || OpMetrics.String() != "metrics" {
		t.Error("op names")
	}
}
