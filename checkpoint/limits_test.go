package checkpoint

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
	"time"
)

// The record's limits, each at the limit and one past it: what the C
// plugin's reader holds the same record to.

// Encode writes up to 0xffff scopes, and of mounts a scope, and strings up
// to their lengths' limits; one more is refused with what was too long.
func TestEncodeLimits(t *testing.T) {
	scopes := func(n int) *Record {
		r := &Record{}
		for i := range n {
			r.Scopes = append(r.Scopes, ScopeRecord{Name: fmt.Sprintf("s%d", i)})
		}
		return r
	}
	mounts := func(n int) *Record {
		return &Record{Scopes: []ScopeRecord{{Name: "c", Mounts: make([]Mount, n)}}}
	}
	for _, tc := range []struct {
		name string
		r    *Record
		want string // "" for no error
	}{
		{"0xffff scopes", scopes(0xffff), ""},
		{"0x10000 scopes", scopes(0x10000), "65536 scopes"},
		{"0xffff mounts", mounts(0xffff), ""},
		{"0x10000 mounts", mounts(0x10000), "65536 mounts"},
		{"a writer of 255 bytes", &Record{Writer: strings.Repeat("w", 255)}, ""},
		{"a writer of 256 bytes", &Record{Writer: strings.Repeat("w", 256)}, "longer than 255 bytes"},
		{"a run dir of maxPath bytes", &Record{RunDir: strings.Repeat("d", maxPath)}, ""},
		{"a run dir of maxPath+1 bytes", &Record{RunDir: strings.Repeat("d", maxPath+1)}, fmt.Sprintf("a path of %d bytes", maxPath+1)},
		// The first error is the one reported.
		{"two long strings", &Record{Writer: strings.Repeat("a", 256), RunDir: strings.Repeat("d", maxPath+1),
			Sockets: []Socket{{Scope: strings.Repeat("b", 256)}}}, `"` + strings.Repeat("a", 256) + `" is longer`},
		{"two long paths", &Record{RunDir: strings.Repeat("d", maxPath+1),
			Scopes: []ScopeRecord{{Name: "c", Mounts: []Mount{{Path: strings.Repeat("m", maxPath+2)}}}}}, fmt.Sprintf("a path of %d bytes", maxPath+1)},
	} {
		b, err := tc.r.Encode()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want == "":
			r, err := DecodeRecord(b)
			if err != nil {
				t.Errorf("%s: written, then refused: %v", tc.name, err)
			} else if len(r.Scopes) != len(tc.r.Scopes) {
				t.Errorf("%s: %d scopes written, %d read", tc.name, len(tc.r.Scopes), len(r.Scopes))
			}
		case err == nil || !strings.Contains(err.Error(), tc.want):
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}

// header is a record header (magic, version 2) saying n bytes follow.
func header(n uint32) []byte {
	return binary.LittleEndian.AppendUint32([]byte("GENIDREC\x02\x00\x00\x00"), n)
}

// DecodeRecord's limits: the size, the header, the count of sockets, a
// path's length and its bytes.
func TestDecodeLimits(t *testing.T) {
	good, _ := sample.Encode()
	path := func(n int, fill byte) []byte {
		r := *sample
		r.RunDir = strings.Repeat("p", n)
		b, err := r.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if fill != 'p' {
			b[bytes.IndexByte(b, 'p')] = fill
		}
		return b
	}
	long := path(maxPath, 'p')
	// The run dir's length field, raised by one: maxPath+1 bytes follow.
	tooLong := append([]byte{}, long...)
	at := bytes.IndexByte(tooLong, 'p') - 2
	binary.LittleEndian.PutUint16(tooLong[at:], maxPath+1)
	tooLong = append(tooLong[:at+2], append([]byte{'p'}, tooLong[at+2:]...)...)
	binary.LittleEndian.PutUint32(tooLong[12:], uint32(len(tooLong)-16))
	// A count of sockets that the bytes left cannot hold, 12 bytes each at
	// least: its own error, before any socket is read.
	sockets := append([]byte{}, good...)
	at = bytes.Index(sockets, []byte("\x02\x00\x00\x00\x92\x10"))
	binary.LittleEndian.PutUint32(sockets[at:], uint32(len(sockets)-at-4)/12+1)

	for _, tc := range []struct {
		name string
		b    []byte
		want string // "" for no error
	}{
		{"MaxRecord bytes", make([]byte, MaxRecord), "no magic"},
		{"MaxRecord+1 bytes", make([]byte, MaxRecord+1), fmt.Sprintf("%d bytes, more than %d", MaxRecord+1, MaxRecord)},
		{"a header alone", header(0), "unexpected EOF"},
		{"15 bytes of header", header(0)[:15], "no magic"},
		{"cut short by 3", append(header(8), 1, 2, 3, 4, 5), "says 8 bytes follow its header, 5 do"},
		{"padded by 2", append(header(1), 1, 2, 3), "says 1 bytes follow its header, 3 do"},
		{"too many sockets", sockets, "sockets cannot fit"},
		{"a path of maxPath bytes", long, ""},
		{"a path of maxPath+1 bytes", tooLong, fmt.Sprintf("a path of %d bytes", maxPath+1)},
		{"a path starting with NUL", path(10, 0), "a path with a NUL byte"},
		{"a path with a NUL", func() []byte { b := path(10, 'p'); b[bytes.IndexByte(b, 'p')+3] = 0; return b }(), "a path with a NUL byte"},
	} {
		r, err := DecodeRecord(tc.b)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want == "" && r.RunDir != strings.Repeat("p", maxPath):
			t.Errorf("%s: run dir of %d bytes", tc.name, len(r.RunDir))
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}

// A socket's path is at most sun_path's 108 bytes, as the C plugin reads
// it: the writer refuses one more, and so does the reader.
func TestSocketPathLimit(t *testing.T) {
	path := "/" + strings.Repeat("s", maxSocketPath-1)
	r := Record{Time: time.Unix(1, 0), Scopes: []ScopeRecord{{}}, Sockets: []Socket{{Path: path}}}
	b, err := r.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if got, err := DecodeRecord(b); err != nil || got.Sockets[0].Path != path {
		t.Errorf("a socket path of %d bytes: %v", maxSocketPath, err)
	}
	r.Sockets[0].Path += "s"
	if _, err := r.Encode(); err == nil || !strings.Contains(err.Error(), "a socket path of 109 bytes") {
		t.Errorf("written, a socket path of %d bytes: %v, want refused", maxSocketPath+1, err)
	}
	// The same record, its path one byte longer: its length, then a byte.
	at := bytes.Index(b, []byte(path)) - 2
	long := append(binary.LittleEndian.AppendUint16(append([]byte{}, b[:at]...), maxSocketPath+1), 's')
	long = append(long, b[at+2:]...)
	binary.LittleEndian.PutUint32(long[12:], uint32(len(long)-16))
	if _, err := DecodeRecord(long); err == nil || !strings.Contains(err.Error(), "a socket path of 109 bytes") {
		t.Errorf("read, a socket path of %d bytes: %v, want refused", maxSocketPath+1, err)
	}
}
