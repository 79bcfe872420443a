# Sailbox. The README's two commands are `make demo` and `make test`; both
# install what they need (build/deps.sh) and cache slow artefacts outside
# the checkout, in $(SAILBOX_CACHE).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.ONESHELL:
export PATH := /usr/local/go/bin:$(PATH)
export SAILBOX_CACHE ?= $(HOME)/.cache/sailbox
# The interpreter of the Python client's tests (Debian's: build/deps.sh
# installs it with pytest and setuptools); the Go tests that run the
# client, in the lab too, use it.
export SAILBOX_PYTHON ?= /usr/bin/python3

.PHONY: demo test bench stress soak chaos deps kernel initramfs image lab-kernel fuzz

# The main job: the demo on real KVM (in the KVM lab when the host has none):
# sailboxd (with sailbox-vmm and sailbox-net beside it) and a box's
# lifecycle driven with sail, all from bin/.
demo: deps
	export SAILBOX_GUEST_KERNEL=$$(kernel/build.sh)
	export SAILBOX_GUEST_INITRAMFS=$$(guestagent/initramfs.sh)
	export SAILBOX_DEFAULT_IMAGE=$$(image/build.sh)
	go build -o bin/ ./cmd/sailboxd ./cmd/sailbox-vmm ./cmd/sailbox-net ./cmd/sail ./cmd/sailbox-demo
	go run ./cmd/kvmlab run -timeout 20m -- bin/sailbox-demo -image "$$SAILBOX_DEFAULT_IMAGE"

# The last commit whose guest agent speaks schema 2: the kvm tier upgrades
# boxes booted on it to the current agent.
PREVIOUS_AGENT_REV := 77f2d1477150a2ef0d777501d18da74c154ee7ae

# Every tier: static checks and unit tests on the host, then the kvm tier on
# real /dev/kvm. Fails, never skips, when the kvm tier cannot run.
test: deps
	export SAILBOX_GUEST_KERNEL=$$(kernel/build.sh)
	export SAILBOX_GUEST_INITRAMFS=$$(guestagent/initramfs.sh)
	echo "== static checks"
	unformatted=$$(gofmt -l $$(git ls-files '*.go'))
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	go vet ./...
	echo "== unit tier (host)"
	go test -count=1 ./...
	echo "== python client (pytest, host)"
	PYTHONDONTWRITEBYTECODE=1 "$$SAILBOX_PYTHON" -m pytest -q -p no:cacheprovider clients/python
	echo "== kvm tier (real /dev/kvm)"
	export SAILBOX_DEFAULT_IMAGE=$$(image/build.sh)
	export SAILBOX_OLD_GUEST_INITRAMFS=$$(guestagent/initramfs.sh --rev $(PREVIOUS_AGENT_REV))
	go build -o bin/ ./cmd/sailbox-vmm ./cmd/sailbox-net
	export SAILBOX_VMM=$$PWD/bin/sailbox-vmm SAILBOX_NET=$$PWD/bin/sailbox-net
	go run ./cmd/kvmlab test ./...

# Benchmarks on real KVM (in the lab here): Sailbox vs QEMU and gokvm
# (build/gokvm.sh, from the Go module proxy), same kernel and initramfs,
# same run, then boxes on the Debian image (image/build.sh).
# Reports medians and ratios; never pass/fail on time. The run hands its
# results back in its output (the lab's files are read-only to it), which
# `sailbox-bench report` turns into bench/results-<time>.{json,md} and
# PNG plots, a broken run's rows too. BENCHFLAGS=-quick: a smoke test.
BENCH_OUTPUT := $(SAILBOX_CACHE)/bench-last-output.log
bench: deps
	export SAILBOX_GUEST_KERNEL=$$(kernel/build.sh)
	export SAILBOX_GUEST_INITRAMFS=$$(guestagent/initramfs.sh)
	export SAILBOX_DEFAULT_IMAGE=$$(image/build.sh)
	go build -o bin/ ./cmd/sailbox-bench ./cmd/sailbox-net ./cmd/sailbox-vmm
	status=0
	gokvm=$$(build/gokvm.sh) || { echo "bench: gokvm could not be built; its rows are skipped" >&2; gokvm=; }
	go run ./cmd/kvmlab run -timeout 120m -- bin/sailbox-bench -image "$$SAILBOX_DEFAULT_IMAGE" -gokvm "$$gokvm" -commit "$$(git describe --always --dirty)" $(BENCHFLAGS) | tee "$(BENCH_OUTPUT)" || status=$$?
	bin/sailbox-bench report -in "$(BENCH_OUTPUT)" -out bench || { [ "$$status" != 0 ] || status=1; }
	exit "$$status"

# Reproductions run many times over, not part of `make test`: today, ten
# MiB of guest stdout on each of eight fresh boots (the lab stall).
stress: deps
	export SAILBOX_GUEST_KERNEL=$$(kernel/build.sh)
	export SAILBOX_GUEST_INITRAMFS=$$(guestagent/initramfs.sh)
	go run ./cmd/kvmlab test -timeout 30m -run '^TestStressKVM' ./vmm/

# The lab's own stability, not part of `make test`: TestKVMChurn (VMs
# booted, killed with SIGKILL inside KVM_RUN, shut down) in SOAK_BOOTS
# fresh labs one after another, with no reruns; every lab that crashes
# is counted.
SOAK_BOOTS ?= 40
soak: deps
	export SAILBOX_GUEST_KERNEL=$$(kernel/build.sh)
	export SAILBOX_GUEST_INITRAMFS=$$(guestagent/initramfs.sh)
	go run ./cmd/kvmlab test -boots $(SOAK_BOOTS) -timeout 10m -run '^TestKVMChurn$$' ./cmd/sailbox-vmm/

# The chaos and load tests of the kvm tier at full length, not part of
# `make test` (which runs them shorter): CHAOS_TRIALS trials each and
# fifteen minutes of twenty boxes cycling exec, sleep and wake.
CHAOS_TRIALS ?= 40
chaos: deps
	export SAILBOX_GUEST_KERNEL=$$(kernel/build.sh)
	export SAILBOX_GUEST_INITRAMFS=$$(guestagent/initramfs.sh)
	go build -o bin/ ./cmd/sailbox-vmm ./cmd/sailbox-net
	export SAILBOX_VMM=$$PWD/bin/sailbox-vmm SAILBOX_NET=$$PWD/bin/sailbox-net
	export SAILBOX_CHAOS_TRIALS=$(CHAOS_TRIALS) SAILBOX_LOAD_DURATION=15m SAILBOX_LOAD_BOXES=20
	go run ./cmd/kvmlab test -timeout 90m -run '^TestKVM(Chaos|Load)' ./cmd/sailboxd/

deps:
	build/deps.sh

kernel: deps
	kernel/build.sh

initramfs:
	guestagent/initramfs.sh

# The default box image (Debian bookworm + python3, ca-certificates, curl),
# built once and cached; checked each time, without mounting it.
image: deps
	img=$$(image/build.sh)
	image/check.sh "$$img"
	echo "$$img"

lab-kernel: deps
	build/lab-kernel.sh
	build/lab-qemu.sh

# Runs every fuzz target for FUZZTIME each (seed corpora run in `make test`).
FUZZTIME ?= 30s
fuzz:
	for pkg in $$(go list ./...); do
	  for f in $$(go test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do
	    echo "== $$pkg $$f"; go test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) $$pkg
	  done
	done
