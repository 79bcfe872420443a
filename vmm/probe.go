package vmm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/sailbox-dev/sailbox/vmm/kvm"
	"github.com/sailbox-dev/sailbox/vmm/memory"
)

// The probe guest: sixteen bytes of real-mode code that write a
// NUL-terminated message to the serial port and halt. It is the smallest
// guest that proves a host's KVM runs code: `sailbox-vmm probe` and the
// kvm-tier tests use it before anything boots Linux.
const (
	probeEntry    = 0x1000 // guest address of the code, CS:IP = 0000:1000
	probeMemSize  = 0x10000
	probeMaxExits = 1 << 16 // a probe guest needs len(message)+1 exits
	serialPort    = 0x3f8   // COM1 data register
)

// probeCode returns the machine code for:
//
//	       mov  dx, 0x3f8
//	       mov  si, msg
//	next:  lodsb            ; al = ds:[si++]
//	       test al, al
//	       jz   done
//	       out  dx, al
//	       jmp  next
//	done:  hlt
//	msg:   db   message, 0
func probeCode(message string) []byte {
	const msgOffset = 15
	msg := uint16(probeEntry + msgOffset)
	code := []byte{
		0xBA, serialPort & 0xff, serialPort >> 8, // mov dx, 0x3f8
		0xBE, byte(msg), byte(msg >> 8), // mov si, msg
		0xAC,       // lodsb
		0x84, 0xC0, // test al, al
		0x74, 0x03, // jz done (+3)
		0xEE,       // out dx, al
		0xEB, 0xF8, // jmp next (-8)
		0xF4, // hlt
	}
	if len(code) != msgOffset {
		panic("probe code layout changed")
	}
	return append(append(code, message...), 0)
}

// ProbeMessage is what the probe guest prints.
const ProbeMessage = "Sailbox probe: hello from a KVM guest in real mode\n"

// ProbeResult is what a probe guest did.
type ProbeResult struct {
	Serial []byte         // every byte the guest wrote to COM1
	Exit   kvm.ExitReason // the exit that ended the run (KVM_EXIT_HLT on success)
	Exits  int            // KVM_RUN returns, including the final one
}

// Probe boots the probe guest on sys with one vCPU and one memory slot,
// copies its serial output to serial as it arrives, and returns when the
// guest halts. Any other ending (a shutdown, an unexpected exit, a KVM error)
// is an error that names it.
func Probe(ctx context.Context, sys *kvm.System, serial io.Writer) (ProbeResult, error) {
	var res ProbeResult
	mem, err := memory.New(probeMemSize)
	if err != nil {
		return res, fmt.Errorf("probe: %w", err)
	}
	defer mem.Close()
	if _, err := mem.WriteAt(probeCode(ProbeMessage), probeEntry); err != nil {
		return res, fmt.Errorf("probe: load code: %w", err)
	}

	vm, err := sys.CreateVM()
	if err != nil {
		return res, fmt.Errorf("probe: %w", err)
	}
	defer vm.Close()
	if err := vm.MapMemory(0, 0, mem.Host(), 0); err != nil {
		return res, fmt.Errorf("probe: %w", err)
	}

	// KVM requires the vCPU's ioctls to come from one thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	vcpu, err := vm.CreateVCPU(0)
	if err != nil {
		return res, fmt.Errorf("probe: %w", err)
	}
	defer vcpu.Close()

	sregs, err := vcpu.Sregs()
	if err != nil {
		return res, fmt.Errorf("probe: %w", err)
	}
	// Out of reset CS is f000 with base ffff0000; point it at our code.
	sregs.CS.Base, sregs.CS.Selector = 0, 0
	if err := vcpu.SetSregs(sregs); err != nil {
		return res, fmt.Errorf("probe: %w", err)
	}
	if err := vcpu.SetRegs(kvm.Regs{RIP: probeEntry, RFLAGS: 0x2}); err != nil {
		return res, fmt.Errorf("probe: %w", err)
	}

	for res.Exits < probeMaxExits {
		if err := ctx.Err(); err != nil {
			return res, fmt.Errorf("probe: %w", err)
		}
		err := vcpu.Run()
		res.Exits++
		if errors.Is(err, unix.EINTR) {
			// A signal (Go's preemption, usually) pulled us out before the
			// guest exited; the loop checks ctx and enters again.
			continue
		}
		if err != nil {
			return res, fmt.Errorf("probe: %w", err)
		}
		res.Exit = vcpu.ExitReason()
		switch res.Exit {
		case kvm.ExitIO:
			io, err := vcpu.IO()
			if err != nil {
				return res, fmt.Errorf("probe: %w", err)
			}
			if !io.Out || io.Port != serialPort || io.Size != 1 {
				return res, fmt.Errorf("probe: unexpected port I/O (out=%v port %#x size %d)", io.Out, io.Port, io.Size)
			}
			res.Serial = append(res.Serial, io.Data...)
			if serial != nil {
				if _, err := serial.Write(io.Data); err != nil {
					return res, fmt.Errorf("probe: serial output: %w", err)
				}
			}
		case kvm.ExitHLT:
			return res, nil
		case kvm.ExitInternalError:
			sub, data := vcpu.InternalError()
			return res, fmt.Errorf("probe: %v suberror %d data %#x", res.Exit, sub, data)
		default:
			return res, fmt.Errorf("probe: unexpected %v", res.Exit)
		}
	}
	return res, fmt.Errorf("probe: guest did not halt within %d exits", probeMaxExits)
}
