"""What is not the library: the built-in tasks, their evaluation, the multi-seed comparison tool
and the plots. Nothing in nanoalign/, model/ or kernels/ imports this package."""
