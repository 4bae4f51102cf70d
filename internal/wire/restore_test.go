package wire

import (
	"errors"
	"strings"
	"testing"
)

// A restore names its images dir or not; either way it reads back as
// sent, and a dir that is cut, empty, too long or not text is refused.
func TestRestoreImagesDir(t *testing.T) {
	for _, r := range []Restore{
		{Flags: FlagAvoid, Avoid: 7, PID: 42},
		{Flags: FlagAvoid, Avoid: 7, PID: 42, ImagesDir: "/var/lib/checkpoints/web"},
		{ImagesDir: strings.Repeat("d", MaxImagesDir)},
	} {
		got, err := ParseRestore(r.Encode())
		if err != nil || got != r {
			t.Errorf("ParseRestore(Encode(%+v)) = %+v, %v", r, got, err)
		}
	}
	ok := Restore{PID: 1, ImagesDir: "/img"}.Encode()
	for name, p := range map[string][]byte{
		"no length":     append(U32s(0, 0, 1), 4),
		"cut":           ok[:len(ok)-1],
		"padded":        append(ok, 0),
		"empty":         append(U32s(0, 0, 1), 0, 0),
		"too long":      Restore{ImagesDir: strings.Repeat("d", MaxImagesDir+1)}.Encode(),
		"a NUL":         Restore{ImagesDir: "/a\x00b"}.Encode(),
		"a NUL first":   Restore{ImagesDir: "\x00/a"}.Encode(),
		"not UTF-8":     Restore{ImagesDir: "/a\xffb"}.Encode(),
		"short":         U32s(0, 0)[:8],
		"unknown flags": U32s(1<<7, 0, 0),
	} {
		if r, err := ParseRestore(p); err == nil {
			t.Errorf("%s: ParseRestore(% x) = %+v, want an error", name, p, r)
		} else if name == "cut" && !errors.Is(err, ErrShort) {
			t.Errorf("%s: %v, want ErrShort", name, err)
		}
	}
}

// A name's length byte at its largest (255) is refused, not a panic: 1+255
// must not wrap as a byte when the name is cut out.
func TestParseNameLongest(t *testing.T) {
	p := append([]byte{255}, make([]byte, 300)...)
	for i := range p[1:] {
		p[1+i] = 'a'
	}
	if name, _, err := ParseName(p); err == nil {
		t.Fatalf("ParseName of a 255-byte name: %q, want an error (longer than MaxName)", name)
	}
	if _, _, err := ParseName(p[:200]); !errors.Is(err, ErrShort) {
		t.Fatalf("ParseName of a name cut short: %v, want ErrShort", err)
	}
}
