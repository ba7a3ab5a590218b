//! The `fanout --step-up` search as a state machine: it says which phase to run next and reads
//! what each phase did; it does no I/O, so it is tested alone.
//!
//! Steps of rising rate (`factor` apart, `max_steps` at most). The best step that lost nothing
//! and stayed under the latency limit is the saturation point; past it the steps go on, to the
//! throughput ceiling, until one falls behind (loses, doubles, closes or falls short). The first
//! step over the latency limit that otherwise kept up runs once more at the same rate and counts
//! as over only if it is over again: one stall (a collection in nats-server) in a step's few
//! measured seconds was enough to end the search, and the figure swung between runs.

use crate::fanout::Saturation;

/// What a phase did, as far as the search is concerned.
#[derive(Debug, Clone)]
pub struct StepOutcome {
    pub deliveries_per_s: f64,
    pub send_rate: f64,
    pub p99_ms: f64,
    /// Why it counts as past saturation (latency over the limit, or fell behind), if it does.
    pub over: Option<String>,
    /// Why it did not keep up at all, if it did not.
    pub behind: Option<String>,
}

/// (deliveries/s, send rate, p99 ms) of a step.
type Figures = (f64, f64, f64);

#[derive(Debug)]
pub struct StepUp {
    rate: f64,
    factor: f64,
    max_steps: usize,
    step: usize,
    /// Running the step again at the same rate.
    again: bool,
    done: bool,
    best: Option<Figures>,
    kept_up: Option<Figures>,
    /// The first step over the latency limit (or that fell behind).
    first_over: Option<String>,
    ceiling_stopped: String,
}

impl StepUp {
    pub fn new(rate: f64, factor: f64, max_steps: usize) -> StepUp {
        StepUp {
            rate,
            factor,
            max_steps,
            step: 1,
            again: false,
            done: max_steps == 0,
            best: None,
            kept_up: None,
            first_over: None,
            ceiling_stopped: format!("reached --max-steps {max_steps}"),
        }
    }

    /// The phase to run next (its label and rate), or `None` when the search is over.
    pub fn next(&self) -> Option<(String, f64)> {
        if self.done {
            return None;
        }
        let label = if self.again {
            format!("step {} again", self.step)
        } else {
            format!("step {}", self.step)
        };
        Some((label, self.rate))
    }

    /// Whether the phase just recorded is to be run once more (it is then not a passing step).
    pub fn again(&self) -> bool {
        self.again
    }

    /// Reads what the phase [`StepUp::next`] named did; answers whether it passed.
    pub fn record(&mut self, o: StepOutcome) -> bool {
        let figures = (o.deliveries_per_s, o.send_rate, o.p99_ms);
        if !self.again && o.over.is_some() && o.behind.is_none() && self.first_over.is_none() {
            // It kept up, whatever its latency: a candidate for the ceiling.
            offer(&mut self.kept_up, figures);
            self.again = true;
            return false;
        }
        self.again = false;
        let passed = o.over.is_none();
        if passed && self.first_over.is_none() {
            offer(&mut self.best, figures);
        }
        if o.behind.is_none() {
            offer(&mut self.kept_up, figures);
        }
        if let Some(why) = &o.over
            && self.first_over.is_none()
        {
            self.first_over = Some(format!(
                "step {} at {:.0} msg/s: {why}",
                self.step, self.rate
            ));
        }
        if let Some(behind) = &o.behind {
            // Past the latency limit, on to the throughput ceiling: until it falls behind.
            self.ceiling_stopped =
                format!("step {} at {:.0} msg/s: {behind}", self.step, self.rate);
            self.done = true;
            return passed;
        }
        self.rate *= self.factor;
        self.step += 1;
        self.done = self.step > self.max_steps;
        passed
    }

    /// The saturation point and the ceiling, and why the search stopped.
    pub fn finish(self) -> (Option<Saturation>, Option<Saturation>, String) {
        let stopped = self
            .first_over
            .unwrap_or_else(|| self.ceiling_stopped.clone());
        let ceiling = self
            .kept_up
            .map(|(deliveries_per_s, send_rate, p99_ms)| Saturation {
                deliveries_per_s,
                send_rate,
                p99_ms,
                stopped_because: self.ceiling_stopped,
            });
        let saturation = self
            .best
            .map(|(deliveries_per_s, send_rate, p99_ms)| Saturation {
                deliveries_per_s,
                send_rate,
                p99_ms,
                stopped_because: stopped.clone(),
            });
        (saturation, ceiling, stopped)
    }
}

/// `figures` as `best` if it delivered more.
fn offer(best: &mut Option<Figures>, figures: Figures) {
    if best.is_none_or(|(d, _, _)| figures.0 > d) {
        *best = Some(figures);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(deliveries: f64, p99: f64, over: Option<&str>, behind: Option<&str>) -> StepOutcome {
        StepOutcome {
            deliveries_per_s: deliveries,
            send_rate: deliveries / 10.0,
            p99_ms: p99,
            over: over.map(str::to_owned),
            behind: behind.map(str::to_owned),
        }
    }

    /// What a search found: the saturation point, the ceiling, why it stopped.
    type Found = (Option<Saturation>, Option<Saturation>, String);

    /// Runs the search over `outcomes` (one per phase it asks for); answers the labels and rates
    /// it asked for, and its result.
    fn search(steps: usize, outcomes: Vec<StepOutcome>) -> (Vec<(String, f64)>, Found) {
        let mut s = StepUp::new(100.0, 2.0, steps);
        let mut asked = Vec::new();
        let mut outcomes = outcomes.into_iter();
        while let Some(next) = s.next() {
            asked.push(next);
            s.record(outcomes.next().expect("an outcome for every phase asked"));
        }
        assert!(outcomes.next().is_none(), "every outcome was asked for");
        (asked, s.finish())
    }

    #[test]
    fn steps_rise_until_max_steps_when_every_step_passes() {
        let (asked, (sat, ceiling, stopped)) = search(
            3,
            vec![
                outcome(1000.0, 1.0, None, None),
                outcome(2000.0, 1.0, None, None),
                outcome(4000.0, 2.0, None, None),
            ],
        );
        let rates: Vec<f64> = asked.iter().map(|a| a.1).collect();
        assert_eq!(rates, [100.0, 200.0, 400.0]);
        assert_eq!(sat.unwrap().deliveries_per_s, 4000.0);
        assert_eq!(ceiling.unwrap().deliveries_per_s, 4000.0);
        assert_eq!(stopped, "reached --max-steps 3");
    }

    #[test]
    fn a_step_over_the_limit_runs_again_and_one_stall_does_not_end_the_search() {
        let (asked, (sat, _, _)) = search(
            3,
            vec![
                outcome(1000.0, 1.0, None, None),
                outcome(2000.0, 9.0, Some("p99 9.0 ms over 5 ms"), None),
                outcome(2000.0, 2.0, None, None),
                outcome(4000.0, 2.0, None, None),
            ],
        );
        let labels: Vec<&str> = asked.iter().map(|a| a.0.as_str()).collect();
        assert_eq!(labels, ["step 1", "step 2", "step 2 again", "step 3"]);
        assert_eq!(asked[2].1, asked[1].1, "again at the same rate");
        assert_eq!(sat.unwrap().deliveries_per_s, 4000.0);
    }

    #[test]
    fn over_twice_is_saturation_and_the_search_goes_on_to_the_ceiling() {
        let (asked, (sat, ceiling, stopped)) = search(
            10,
            vec![
                outcome(1000.0, 1.0, None, None),
                outcome(2000.0, 9.0, Some("p99 over"), None),
                outcome(2100.0, 9.0, Some("p99 over"), None),
                outcome(3000.0, 20.0, Some("p99 over"), None),
                outcome(2500.0, 50.0, Some("3 lost"), Some("3 lost")),
            ],
        );
        assert_eq!(asked.len(), 5, "no second run after the first step over");
        let sat = sat.unwrap();
        assert_eq!(
            sat.deliveries_per_s, 1000.0,
            "the best step before the first over"
        );
        assert_eq!(stopped, "step 2 at 200 msg/s: p99 over");
        assert_eq!(sat.stopped_because, stopped);
        let ceiling = ceiling.unwrap();
        assert_eq!(ceiling.deliveries_per_s, 3000.0, "the most that kept up");
        assert_eq!(ceiling.stopped_because, "step 4 at 800 msg/s: 3 lost");
    }

    #[test]
    fn a_first_step_that_falls_behind_passes_nothing() {
        let (asked, (sat, ceiling, stopped)) =
            search(5, vec![outcome(10.0, 90.0, Some("1 lost"), Some("1 lost"))]);
        assert_eq!(asked.len(), 1);
        assert!(sat.is_none() && ceiling.is_none());
        assert_eq!(stopped, "step 1 at 100 msg/s: 1 lost");
    }
}
