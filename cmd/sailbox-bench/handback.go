package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// The bench runs where the guests run: inside the KVM lab, whose view of
// the host's files is read-only, and whose only way back is the program's
// output, streamed over the lab's serial console. So the run hands its
// Results back in that output: the JSON, base64 in numbered lines of
// handbackChunk characters, each
//
//	sailbox-bench-results <i>/<n> <sha256 of the JSON, hex> <base64 chunk>
//
// and `sailbox-bench report` finds them in the captured output (a lab
// kernel message may interrupt a line: the digest catches that). A run
// on a host with KVM hands back the same way.

const (
	handbackMarker = "sailbox-bench-results "
	handbackChunk  = 3000
)

// handBack writes res to w as handback lines.
func handBack(w io.Writer, res *Results) error {
	b, err := json.Marshal(res)
	if err != nil {
		return fmt.Errorf("hand back results: %w", err)
	}
	sum := sha256.Sum256(b)
	digest := hex.EncodeToString(sum[:])
	enc := base64.StdEncoding.EncodeToString(b)
	n := (len(enc) + handbackChunk - 1) / handbackChunk
	for i := range n {
		chunk := enc[i*handbackChunk : min(len(enc), (i+1)*handbackChunk)]
		if _, err := fmt.Fprintf(w, "%s%d/%d %s %s\n", handbackMarker, i+1, n, digest, chunk); err != nil {
			return fmt.Errorf("hand back results: %w", err)
		}
	}
	return nil
}

// errNoHandback is returned by readHandback when its input holds no
// complete, intact set of handback lines.
var errNoHandback = errors.New("no complete results in the bench's output (no sailbox-bench-results lines, or some missing or damaged)")

// readHandback finds the last complete handback in r, a run's output.
func readHandback(r io.Reader) (*Results, error) {
	type set struct {
		n      int
		chunks map[int]string
	}
	sets := map[string]*set{}
	var order []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		i := strings.Index(line, handbackMarker)
		if i < 0 {
			continue
		}
		var k, n int
		var digest, chunk string
		if _, err := fmt.Sscanf(strings.TrimRight(line[i+len(handbackMarker):], "\r"), "%d/%d %s %s", &k, &n, &digest, &chunk); err != nil || k < 1 || k > n {
			continue
		}
		s := sets[digest]
		if s == nil {
			s = &set{n: n, chunks: map[int]string{}}
			sets[digest] = s
			order = append(order, digest)
		}
		s.chunks[k] = chunk
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read the bench's output: %w", err)
	}
	for j := len(order) - 1; j >= 0; j-- {
		digest, s := order[j], sets[order[j]]
		if len(s.chunks) != s.n {
			continue
		}
		var enc strings.Builder
		for k := 1; k <= s.n; k++ {
			enc.WriteString(s.chunks[k])
		}
		b, err := base64.StdEncoding.DecodeString(enc.String())
		if err != nil {
			continue
		}
		if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != digest {
			continue
		}
		return decodeResults(b)
	}
	return nil, errNoHandback
}

// decodeResults parses a Results JSON, refusing other formats.
func decodeResults(b []byte) (*Results, error) {
	var res Results
	if err := json.Unmarshal(b, &res); err != nil {
		return nil, fmt.Errorf("decode results: %w", err)
	}
	if res.Format != resultsFormat {
		return nil, fmt.Errorf("decode results: format %d, want %d", res.Format, resultsFormat)
	}
	return &res, nil
}
