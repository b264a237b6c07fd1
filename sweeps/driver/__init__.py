"""One sweep, in the order it happens: the frozen command line and the study it names
(spec, plan), data and weights made ready once (prepare), the experiment folder claimed
(claim), the Tuner built (builder), trial events recorded (recorder), Ray started or joined
(cluster), a Ctrl-C turned into a clean stop (interrupt), and a local Ray that must not
outlive its driver (reaper)."""
