"""What is not the library: the multi-seed comparison tool and the plots (the built-in tasks and
their evaluation are nanoalign/tasks/). Nothing in nanoalign/, model/ or kernels/ imports this package."""
