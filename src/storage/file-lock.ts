/**
 * Advisory whole-file locks (flock(2)) through libc: Node's fs has none.
 *
 * An upload holds an exclusive lock on its temporary file for as long as it may still publish
 * it; the kernel drops the lock when the process dies, however it dies (kill -9 included). So
 * "nobody holds the lock" is proof that no live process is writing the file, on this host or,
 * on NFS (where Linux maps flock onto the server's byte-range locks), on another one.
 */
import { dlopen, FFIType, read } from "bun:ffi";

const LOCK_EX = 2;
const LOCK_NB = 4;
const EWOULDBLOCK = 11;

type Libc = { flock(fd: number, operation: number): number; errno(): number };

let libc: Libc | null | undefined;

function loadLibc(): Libc | null {
  if (libc !== undefined) return libc;
  try {
    const lib = dlopen("libc.so.6", {
      flock: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
      __errno_location: { args: [], returns: FFIType.ptr },
    });
    libc = {
      flock: (fd, operation) => lib.symbols.flock(fd, operation),
      errno: () => {
        const at = lib.symbols.__errno_location();
        return at === null ? 0 : read.i32(at, 0);
      },
    };
  } catch {
    libc = null;
  }
  return libc;
}

/**
 * "locked": this descriptor now holds the exclusive lock (released by closing it);
 * "held": another open file holds it; "unsupported": locks cannot be taken here (no libc
 * access, or a file system without locking such as NFS without a lock manager).
 */
export type LockResult = "locked" | "held" | "unsupported";

/** Tries to take the exclusive lock on `fd` without waiting. */
export function tryLockExclusive(fd: number): LockResult {
  const lib = loadLibc();
  if (lib === null) return "unsupported";
  if (lib.flock(fd, LOCK_EX | LOCK_NB) === 0) return "locked";
  return lib.errno() === EWOULDBLOCK ? "held" : "unsupported";
}
