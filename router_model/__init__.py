"""The functional-token router (Octopus v2/v4). Not built yet: see the README's "Not yet built"."""
