import torch

# Tests use tiny tensors: one thread avoids OpenMP start-up and spin costs that dominate small
# ops (and make a shared 2-core machine crawl when several test processes run at once).
torch.set_num_threads(1)
