"""Do a clustering's members move together? Mean correlation three ways, the yearly study, θ chosen on
past years, matched cluster sizes and the cluster bootstrap."""
