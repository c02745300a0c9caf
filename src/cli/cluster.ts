/**
 * `tftpd cluster status`: the fleet as its heartbeats in Redis describe it, one greppable line
 * per node (live, or dead and when it was last seen), a `fleet` line of totals and the shared
 * file cache; `--json` prints the same as one object.
 */
import { defineCommand } from "citty";
import { listFiles } from "../cluster/content.ts";
import { cacheLines, cacheTotals, fleetLines, readFleet, summedFigures } from "../cluster/fleet.ts";
import { fleetArgs, fleetCommandConfig, withFleetLink } from "./fleet-link.ts";

const statusArgs = {
  ...fleetArgs,
  json: { type: "boolean", description: "Print the fleet as one JSON object" },
} as const;

const status = defineCommand({
  meta: { name: "status", description: "Show the fleet: live and dead nodes, their load, the shared cache" },
  args: statusArgs,
  async run({ args: a, rawArgs }) {
    const command = "cluster status";
    const config = fleetCommandConfig(command, statusArgs, rawArgs, a.config);
    const { fleet, files } = await withFleetLink(command, config, a.redis, async (link) => ({
      fleet: await readFleet(link),
      files: await listFiles(link),
    }));
    if (a.json) {
      console.log(JSON.stringify({ ...fleet, fleet: summedFigures(fleet), cache: { ...cacheTotals(files), list: files } }));
    } else {
      console.log([...fleetLines(fleet), ...cacheLines(files, fleet.read_at_ms)].join("\n"));
    }
  },
});

export default defineCommand({
  meta: { name: "cluster", description: "Look at the fleet of nodes sharing a Redis Cluster" },
  subCommands: { status },
});
