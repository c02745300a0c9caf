/** `tftpd version`: what is running, for bug reports and fleet audits. */
import { defineCommand } from "citty";
import { BUILD_COMMIT, VERSION } from "../version.ts";

export default defineCommand({
  meta: { name: "version", description: "Print the version, build and Bun runtime" },
  args: {
    json: { type: "boolean", description: "Machine-readable output" },
  },
  run({ args }) {
    const info = { version: VERSION, build: BUILD_COMMIT, bun: Bun.version, platform: `${process.platform}-${process.arch}` };
    if (args.json) console.log(JSON.stringify(info));
    else console.log(`tftpd ${info.version} (build ${info.build}, bun ${info.bun}, ${info.platform})`);
  },
});
