# Sourced by the scripts that build or fetch into $SAILBOX_CACHE (the guest
# kernel, initramfs and image, the lab's kernel and QEMU). Two of them
# filling the same entry at once (two `make` runs on one machine, a
# benchmark beside a test) would write over each other's objects and
# directories, so each holds a lock for the rest of its run and, once it
# has it, looks for what the other one built before building it again.

# cache_lock DIR WHAT: takes DIR/.lock (on file descriptor 9) for the rest
# of the script, saying so if it must wait.
cache_lock() {
  mkdir -p "$1"
  exec 9>"$1/.lock"
  if ! flock -n 9; then
    echo "$2: waiting for another build to finish" >&2
    flock 9
  fi
}
