//! `raft-bench compare`: both benchmarks on raft-node and etcd, in rounds
//! that alternate the order, with the ratios.

use std::collections::BTreeMap;

use super::{election, finish, new_report, start, throughput};
use crate::cli::args::{check_load, CompareArgs};
use crate::cli::election::{Fault, Trial};
use crate::cli::report::{self, ElectionResult};
use crate::cli::System;

/// Runs `raft-bench compare`.
pub(in crate::cli) async fn run(a: CompareArgs, command: String) -> anyhow::Result<()> {
    check_load(&a.load)?;
    let both = [System::Raft, System::Etcd];
    let mut r = new_report(command, &a.common, &both)?;
    let rounds = a.rounds.max(1);
    let (faults, trials_total) = (&a.faults.faults, a.faults.trials);
    let per_round = trials_total.div_ceil(rounds);
    let mut trials: BTreeMap<(System, Fault), (Vec<Trial>, Vec<String>)> = BTreeMap::new();
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            both
        } else {
            [both[1], both[0]]
        };
        for system in order {
            eprintln!("\n== round {} of {rounds}: {system}", round + 1);
            let mut c = start(&a.common, system).await?;
            if !a.no_throughput {
                let urls = throughput::endpoints(&c, a.load.protocol);
                for &n in &a.load.clients {
                    let t =
                        throughput::measure(Some(&c), system, &urls, &a.load, &a.common, n, round)
                            .await?;
                    eprint!("{}", report::throughput_table(std::slice::from_ref(&t)));
                    r.throughput.push(t);
                }
            }
            if !a.no_election {
                let n = per_round.min(trials_total - per_round * round);
                for &f in faults {
                    let e = election::trials(&mut c, f, n, round).await?;
                    let slot = trials.entry((system, f)).or_default();
                    slot.0.extend(e.trials);
                    slot.1.extend(e.failures);
                }
            }
            c.shutdown();
        }
    }
    for system in both {
        for &f in faults {
            if let Some((t, fails)) = trials.remove(&(system, f)) {
                r.elections.push(ElectionResult::new(system, f, t, fails));
            }
        }
    }
    finish(&r, &a.common)?;
    let ratios = format!(
        "\nraft-node / etcd, protocol {}:\n{}",
        super::protocol_name(a.load.protocol),
        report::ratio_table(&r)
    );
    if a.common.json {
        eprintln!("{ratios}");
    } else {
        println!("{ratios}");
    }
    Ok(())
}
