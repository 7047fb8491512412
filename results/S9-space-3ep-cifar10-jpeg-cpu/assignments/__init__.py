"""The page of the CIFAR-10 lab's explorer and what it shows."""
