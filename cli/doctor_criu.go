package main

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
)

// What doctor reads of a CRIU plugin, without loading it: CRIU's own
// descriptor of it (criu-plugin.h: cr_plugin_desc_t CR_PLUGIN_DESC, whose
// version CRIU checks at load) and the CRIU version genid's plugin says it
// was built for (genid_criu_built_for, from criu/version.h).
type pluginInfo struct {
	APIVersion pluginAPI
	MaxHooks   uint32 // CR_PLUGIN_HOOK__MAX of the headers it was built with
	BuiltFor   string // "" if it does not say
}

// pluginAPI is CRIU_PLUGIN_VERSION: major<<16 | minor<<8 | sublevel.
type pluginAPI uint32

// criuPluginAPI is CRIU_PLUGIN_VERSION of CRIU 3.x and 4.x (0.2.0).
const criuPluginAPI pluginAPI = 2 << 8

func (v pluginAPI) api() string { return fmt.Sprintf("%d.%d.%d", v>>16, v>>8&0xff, v&0xff) }

// Where CR_PLUGIN_DESC holds version and max_hooks: after its three
// pointers (name, init, exit).
const (
	descVersionOff = 24
	descSize       = 32
)

// readPlugin reads a plugin's descriptor and its built-for version.
func readPlugin(path string) (*pluginInfo, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 {
		return nil, errors.New("not a 64-bit ELF object")
	}
	syms, err := f.DynamicSymbols()
	if err != nil {
		return nil, fmt.Errorf("no dynamic symbols: %w", err)
	}
	var p pluginInfo
	desc, err := symbolData(f, syms, "CR_PLUGIN_DESC", descSize)
	if err != nil {
		return nil, fmt.Errorf("not a CRIU plugin: %w", err)
	}
	p.APIVersion = pluginAPI(f.ByteOrder.Uint32(desc[descVersionOff:]))
	p.MaxHooks = f.ByteOrder.Uint32(desc[descVersionOff+4:])
	if s, err := symbolData(f, syms, "genid_criu_built_for", 1); err == nil {
		if i := bytes.IndexByte(s, 0); i >= 0 {
			p.BuiltFor = string(s[:i])
		}
	}
	return &p, nil
}

// symbolData returns the bytes of a defined data symbol, at least min.
func symbolData(f *elf.File, syms []elf.Symbol, name string, min uint64) ([]byte, error) {
	for _, s := range syms {
		if s.Name != name || s.Section == elf.SHN_UNDEF || int(s.Section) >= len(f.Sections) {
			continue
		}
		sec := f.Sections[s.Section]
		if s.Size < min || s.Value < sec.Addr || s.Value+s.Size > sec.Addr+sec.Size || sec.Type == elf.SHT_NOBITS {
			return nil, fmt.Errorf("%s: %d bytes in %s", name, s.Size, sec.Name)
		}
		data, err := sec.Data()
		if err != nil {
			return nil, err
		}
		off := s.Value - sec.Addr
		return data[off : off+s.Size], nil
	}
	return nil, fmt.Errorf("no symbol %s", name)
}
