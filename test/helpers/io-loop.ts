/** An epoll loop for a test (src/net/io-loop.ts), closed with the test's other resources. */
import { closeWake, IoLoop } from "../../src/net/io-loop.ts";

/** Opens a loop whose turns keep short sleeps (the test waits while it turns); `closers` gets its close. */
export function openTestLoop(closers: (() => void)[]): IoLoop {
  const loop = IoLoop.open();
  if (!loop) throw new Error("no epoll loop on this machine");
  loop.holds = 1;
  closers.push(() => {
    loop.close();
    closeWake(loop.wakeFd);
  });
  return loop;
}
