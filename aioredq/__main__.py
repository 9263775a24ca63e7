from aioredq._cli import main

main()
