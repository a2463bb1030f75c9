"""The model and everything that touches its forward pass: loading, the site table, components, interventions, the runner, generation, readout and prompt templates."""
