// Package kernel owns the guest kernel: its config fragment and
// reproducible build, and the parsing of the boot image the VMM loads.
//
// The build lives beside this file as plain files rather than Go code:
// sailbox.config is a Kconfig fragment applied on top of `make tinyconfig`,
// and build.sh turns it and Debian's linux-source package into a bzImage
// cached under $SAILBOX_CACHE/kernel/<key>/bzImage, where the key hashes
// every input.
//
// The Go code reads that bzImage. ParseBzImage validates the real-mode
// kernel header defined by the Linux x86 boot protocol
// (Documentation/arch/x86/boot.rst, "The Real-Mode Kernel Header") and
// reports where the real-mode setup and the protected-mode kernel lie in
// the file, so that a loader can copy the setup header into the zero page
// and the protected-mode kernel into guest memory.
package kernel
