package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// byteSize is a flag's size in bytes, written as a whole number with an
// optional binary suffix: K, M, G or T (KiB, MiB, GiB, TiB; also written
// KiB... or k...), as truncate -s and qemu-img take them. 2G is 2 GiB.
type byteSize int64

var sizeUnits = map[string]int64{"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

func (s *byteSize) String() string { return strconv.FormatInt(int64(*s), 10) }

func (s *byteSize) Set(v string) error {
	n, err := parseByteSize(v)
	if err != nil {
		return err
	}
	*s = byteSize(n)
	return nil
}

// parseByteSize reads a byteSize.
func parseByteSize(v string) (int64, error) {
	bad := fmt.Errorf("size %q: want a whole number of bytes with an optional suffix K, M, G or T (powers of 1024), such as 2G", v)
	digits := strings.TrimRightFunc(v, func(r rune) bool { return r < '0' || r > '9' })
	unit := v[len(digits):]
	if u, ok := strings.CutSuffix(unit, "iB"); ok && u != "" {
		unit = u
	}
	mult, ok := sizeUnits[strings.ToUpper(unit)]
	if digits == "" || !ok || strings.TrimLeft(digits, "0123456789") != "" {
		return 0, bad
	}
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("size %q: too large", v)
	}
	return n * mult, nil
}
