"""The command-line app above the core: `rbexport run | demo` (cli), running an export
with a progress display on either engine (runner), the demo with its local SeaweedFS,
and the generated sample projects. The core (rbexport/), the flows and the tasks never
import it."""
