//! Running the loaded XDP program on a given frame through `BPF_PROG_TEST_RUN`, without
//! attaching it: the katran/cilium way to test verdicts, records and counters.

use aya::programs::{TestRun, TestRunOptions, Xdp};
use probe_common::PROG_XDP;

use super::{KernelError, KernelProbes};

impl KernelProbes {
    /// Classify answers at TC ingress from now on, as attaching with
    /// [`super::AnswerHook::Tc`] does, without attaching anything: for test runs of
    /// `sonde_tc_ingress` ([`KernelProbes::run_tc_ingress`]).
    ///
    /// # Errors
    /// The config map cannot be written.
    pub fn classify_at_tc(&mut self) -> Result<(), KernelError> {
        self.ingress = probe_common::config::ingress::TC;
        match self.config {
            Some(cfg) => self.set_config(&cfg),
            None => Ok(()),
        }
    }

    /// Run the XDP program once on `frame`; returns its verdict (`XDP_*`).
    ///
    /// # Errors
    /// The program is missing or the kernel refused the test run (e.g. a frame shorter
    /// than an Ethernet header).
    pub fn run_xdp(&mut self, frame: &[u8]) -> Result<u32, KernelError> {
        self.run_xdp_out(frame).map(|(verdict, _)| verdict)
    }

    /// Run the XDP program once on `frame`; returns its verdict and the frame as the
    /// program left it (e.g. rewritten for `XDP_TX`).
    ///
    /// # Errors
    /// As [`KernelProbes::run_xdp`].
    pub fn run_xdp_out(&mut self, frame: &[u8]) -> Result<(u32, Vec<u8>), KernelError> {
        let xdp: &mut Xdp = super::program(self.ebpf_mut(), PROG_XDP)?;
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        };
        let res = xdp.test_run(opts).map_err(|source| KernelError::TestRun {
            program: PROG_XDP,
            source,
        })?;
        out.truncate(res.data_size_out as usize);
        Ok((res.return_value, out))
    }
}

impl KernelProbes {
    /// Run the TC egress program once on `frame` (as if sent); returns its action.
    ///
    /// # Errors
    /// The program is missing or the kernel refused the test run.
    pub fn run_tc(&mut self, frame: &[u8]) -> Result<i32, KernelError> {
        self.run_classifier(probe_common::PROG_TC_EGRESS, frame)
            .map(|(action, _)| action)
    }

    /// Run the TC ingress program once on `frame` (as if received); returns its action
    /// and the frame as the program left it (an RST to redirect, with `reset::TC`).
    ///
    /// # Errors
    /// The program is missing or the kernel refused the test run.
    pub fn run_tc_ingress(&mut self, frame: &[u8]) -> Result<(i32, Vec<u8>), KernelError> {
        self.run_classifier(probe_common::PROG_TC_INGRESS, frame)
    }

    fn run_classifier(
        &mut self,
        program: &'static str,
        frame: &[u8],
    ) -> Result<(i32, Vec<u8>), KernelError> {
        let tc: &mut aya::programs::SchedClassifier = super::program(self.ebpf_mut(), program)?;
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        };
        let res = tc
            .test_run(opts)
            .map_err(|source| KernelError::TestRun { program, source })?;
        out.truncate(res.data_size_out as usize);
        Ok((res.return_value as i32, out))
    }
}
