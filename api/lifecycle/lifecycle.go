// Package lifecycle is the state machine of a Sailbox: which calls a box
// in each state accepts, the state it is in afterwards, and what the
// daemon must do to its VM on the way. It is the one table of the box
// lifecycle (STYLE.md habit 9); the daemon consults it before every
// change of state and never decides a transition anywhere else.
//
// The package is public, not internal, because the states are part of
// the wire contract: clients switch on Box.State, and the table tells
// them which calls a state accepts.
//
//	eff, err := lifecycle.Next(box.State, lifecycle.OpSleep)
//	if err != nil { return err } // an *InvalidTransitionError: HTTP 409
//	// do eff.Action to the VM, then record eff.Next
//
// An operation not in the table for a state is refused with an
// *InvalidTransitionError, which matches ErrInvalidTransition.
package lifecycle

import (
	"errors"
	"fmt"
)

// State is where a box is in its lifecycle. Its string is the wire form.
type State string

const (
	// Creating: the record exists and its first VM is booting. A box that
	// fails to boot is deleted, so no box stays here; one found here when
	// the daemon starts is debris of a crash and is removed.
	Creating State = "creating"
	// Running: a VMM process runs the box.
	Running State = "running"
	// Paused: checkpointed and powered down until an explicit resume or
	// connect.
	Paused State = "paused"
	// Sleeping: checkpointed and powered down until an exec, a file call,
	// a connection to an exposed port, a resume or a connect wakes it.
	Sleeping State = "sleeping"
	// Failed: the VM is gone and could not be brought back from its last
	// completed checkpoint. Resume and connect retry; terminate cleans up.
	Failed State = "failed"
	// Terminated: destroyed. Only the answer to terminate shows it; the
	// record is deleted.
	Terminated State = "terminated"
)

// States lists every state, in lifecycle order.
var States = []State{Creating, Running, Paused, Sleeping, Failed, Terminated}

// Valid reports whether s is one of States.
func (s State) Valid() bool {
	for _, v := range States {
		if s == v {
			return true
		}
	}
	return false
}

// Op is a call on a box, or an event the daemon reacts to.
type Op string

const (
	// Client calls.
	OpCheckpoint Op = "checkpoint"
	OpFork       Op = "fork" // the op on the parent; the child is a new box
	OpPause      Op = "pause"
	OpSleep      Op = "sleep"
	OpResume     Op = "resume"
	OpConnect    Op = "connect"
	OpUpgrade    Op = "upgrade"
	OpTerminate  Op = "terminate"
	OpExec       Op = "exec"
	OpFile       Op = "file"   // read or write a file in the guest
	OpExpose     Op = "expose" // add or remove a host port forward
	// OpInference: an inference call through the daemon's proxy puts
	// a running box to sleep while the upstream call is in flight.
	OpInference Op = "inference"

	// Events.
	OpIngress Op = "ingress" // a connection arrived on an exposed port
	OpBooted  Op = "booted"  // the first VM of a creating box is up
	OpLost    Op = "lost"    // the box's VMM is gone (crash, daemon restart found it dead)
	OpFail    Op = "fail"    // bringing the VM back failed
)

// Ops lists every op.
var Ops = []Op{
	OpCheckpoint, OpFork, OpPause, OpSleep, OpResume, OpConnect, OpUpgrade,
	OpTerminate, OpExec, OpFile, OpExpose, OpInference, OpIngress, OpBooted, OpLost, OpFail,
}

// Action is what the daemon does to a box's VM for a transition.
type Action string

const (
	// ActNone: nothing; the VM (or its absence) stays as it is.
	ActNone Action = "none"
	// ActCheckpoint: a live checkpoint; the VM keeps running.
	ActCheckpoint Action = "checkpoint"
	// ActCheckpointStop: a checkpoint, then the VM is powered down.
	ActCheckpointStop Action = "checkpoint+stop"
	// ActForkLive: a live checkpoint of the running parent, and a child
	// VM restored from it. The parent keeps running.
	ActForkLive Action = "fork-live"
	// ActForkFromCheckpoint: a child VM restored from the parent's last
	// completed checkpoint; the parent is not woken.
	ActForkFromCheckpoint Action = "fork-from-checkpoint"
	// ActRestore: start a VM from the box's last completed checkpoint
	// (or, with an upgrade pending, boot the current agent on its disk).
	ActRestore Action = "restore"
	// ActReboot: reboot onto the current guest agent on the same disk
	// (nothing when the agent is already current).
	ActReboot Action = "reboot"
	// ActRecordUpgrade: note the upgrade; it is applied at the next wake.
	ActRecordUpgrade Action = "record-upgrade"
	// ActDestroy: stop the VM if one runs and free what only this box
	// references.
	ActDestroy Action = "destroy"
)

// Effect is one cell of the table: the state after the op, and what
// happens to the VM.
type Effect struct {
	Next   State
	Action Action
}

// table is the lifecycle. A missing cell is an invalid transition.
var table = map[State]map[Op]Effect{
	Creating: {
		OpBooted: {Running, ActNone},
		OpFail:   {Failed, ActNone},
	},
	Running: {
		OpCheckpoint: {Running, ActCheckpoint},
		OpFork:       {Running, ActForkLive},
		OpPause:      {Paused, ActCheckpointStop},
		OpSleep:      {Sleeping, ActCheckpointStop},
		OpConnect:    {Running, ActNone},
		OpUpgrade:    {Running, ActReboot},
		OpTerminate:  {Terminated, ActDestroy},
		OpExec:       {Running, ActNone},
		OpFile:       {Running, ActNone},
		OpExpose:     {Running, ActNone},
		OpInference:  {Sleeping, ActCheckpointStop},
		OpIngress:    {Running, ActNone},
		OpLost:       {Running, ActRestore},
		OpFail:       {Failed, ActNone},
	},
	Paused: {
		OpFork:      {Paused, ActForkFromCheckpoint},
		OpSleep:     {Sleeping, ActNone}, // already down; only the wake policy loosens
		OpResume:    {Running, ActRestore},
		OpConnect:   {Running, ActRestore},
		OpUpgrade:   {Paused, ActRecordUpgrade},
		OpTerminate: {Terminated, ActDestroy},
		OpExpose:    {Paused, ActNone},
		OpFail:      {Failed, ActNone},
	},
	Sleeping: {
		OpFork:      {Sleeping, ActForkFromCheckpoint},
		OpPause:     {Paused, ActNone}, // already down; only the wake policy tightens
		OpResume:    {Running, ActRestore},
		OpConnect:   {Running, ActRestore},
		OpUpgrade:   {Sleeping, ActRecordUpgrade},
		OpTerminate: {Terminated, ActDestroy},
		OpExec:      {Running, ActRestore},
		OpFile:      {Running, ActRestore},
		OpExpose:    {Sleeping, ActNone},
		OpIngress:   {Running, ActRestore},
		OpFail:      {Failed, ActNone},
	},
	Failed: {
		OpResume:    {Running, ActRestore},
		OpConnect:   {Running, ActRestore},
		OpUpgrade:   {Failed, ActRecordUpgrade},
		OpTerminate: {Terminated, ActDestroy},
		OpExpose:    {Failed, ActNone},
		OpFail:      {Failed, ActNone},
	},
	Terminated: {},
}

// ErrInvalidTransition is matched by every *InvalidTransitionError.
var ErrInvalidTransition = errors.New("invalid lifecycle transition")

// InvalidTransitionError reports an op the box's state does not accept.
type InvalidTransitionError struct {
	State State
	Op    Op
}

func (e *InvalidTransitionError) Error() string {
	return fmt.Sprintf("cannot %s a %s box", e.Op, e.State)
}

// Is makes errors.Is(err, ErrInvalidTransition) true.
func (e *InvalidTransitionError) Is(target error) bool { return target == ErrInvalidTransition }

// Next returns what op does to a box in state s, or an
// *InvalidTransitionError if s does not accept op.
func Next(s State, op Op) (Effect, error) {
	if eff, ok := table[s][op]; ok {
		return eff, nil
	}
	return Effect{}, &InvalidTransitionError{State: s, Op: op}
}

// Allowed reports whether a box in state s accepts op.
func Allowed(s State, op Op) bool {
	_, ok := table[s][op]
	return ok
}

// Awake reports whether a box in state s has a VM that should be running.
func Awake(s State) bool { return s == Running }
